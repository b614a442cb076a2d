//! The emulated tenant's users: ids of the three kinds, faces or not, and
//! `user_id`s that only survive correct URL encoding.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use super::face_image::face_jpeg;
use crate::api::IdKind;

/// `user_id`s a tenant's admins could set, each breaking a naive URL or file
/// name: space, plus, percent, question mark, hash, non-ASCII, an encoded slash.
pub const ODD_USER_IDS: [&str; 8] = [
    "emp 001",
    "plus+sign",
    "100%",
    "what?",
    "hash#tag",
    "张伟",
    "a%2Fb",
    "semi;colon&x=1",
];

/// user_ids a hostile directory could hold: terminal escapes (set the
/// title, clear the screen) and a newline that forges an output line.
pub const HOSTILE_USER_IDS: [&str; 3] = [
    "esc\x1b]0;pwned\x07\x1b[2J",
    "line\nFAKE: all 3 faces ok",
    "bidi\u{202e}gpj.exe",
];

#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub users: usize,
    /// The user_ids of the first users (then `e00008`, ...).
    pub odd_user_ids: Vec<String>,
    pub seed: u64,
    /// Full faces are this size; cropped ones a smaller square.
    pub face_width: u16,
    pub face_height: u16,
    /// Faces shorter than this are padded after the image's end (decoders
    /// ignore it), for tests of large answers.
    pub pad_faces_to: usize,
}

impl Default for TenantSpec {
    fn default() -> TenantSpec {
        TenantSpec {
            users: 30,
            odd_user_ids: ODD_USER_IDS.map(str::to_owned).to_vec(),
            seed: 1,
            face_width: 120,
            face_height: 150,
            pad_faces_to: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct User {
    /// In the order of `IdKind::ALL`.
    pub ids: [String; 3],
    pub has_face: bool,
    pub card: u64,
    seed: u64,
}

impl User {
    pub fn id(&self, kind: IdKind) -> &str {
        &self.ids[kind_slot(kind)]
    }
}

fn kind_slot(kind: IdKind) -> usize {
    IdKind::ALL.iter().position(|k| *k == kind).unwrap()
}

pub struct Tenant {
    spec: TenantSpec,
    users: Vec<User>,
    index: HashMap<(IdKind, String), usize>,
    /// Generated faces by (user, cropped).
    faces: Mutex<FacesByUser>,
    /// Users whose enrolment changed since generation: whether they have a face now.
    enrolled: Mutex<HashMap<usize, bool>>,
}

type FacesByUser = HashMap<(usize, bool), Arc<Vec<u8>>>;

fn mix(seed: u64, i: u64, salt: u64) -> u64 {
    let mut x =
        seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 29)
}

impl Tenant {
    pub fn generate(spec: TenantSpec) -> Tenant {
        let users: Vec<User> = (0..spec.users)
            .map(|i| {
                let n = i as u64;
                let user_id = spec
                    .odd_user_ids
                    .get(i)
                    .map_or_else(|| format!("e{i:05}"), |s| s.clone());
                User {
                    ids: [
                        format!(
                            "ou_{:016x}{:016x}",
                            mix(spec.seed, n, 1),
                            mix(spec.seed, n, 2)
                        ),
                        format!(
                            "on_{:016x}{:016x}",
                            mix(spec.seed, n, 3),
                            mix(spec.seed, n, 4)
                        ),
                        user_id,
                    ],
                    // Every seventh user past the odd ones has no face enrolled.
                    has_face: i < spec.odd_user_ids.len() || i % 7 != 6,
                    card: 100_000 + n,
                    seed: mix(spec.seed, n, 5),
                }
            })
            .collect();
        let mut index = HashMap::new();
        for (i, user) in users.iter().enumerate() {
            for kind in IdKind::ALL {
                index.insert((kind, user.id(kind).to_owned()), i);
            }
        }
        Tenant {
            spec,
            users,
            index,
            faces: Mutex::new(HashMap::new()),
            enrolled: Mutex::new(HashMap::new()),
        }
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    pub fn find(&self, kind: IdKind, id: &str) -> Option<usize> {
        self.index.get(&(kind, id.to_owned())).copied()
    }

    /// Whether user `i` has a face enrolled now.
    pub fn has_face(&self, i: usize) -> bool {
        let Some(user) = self.users.get(i) else {
            return false;
        };
        self.enrolled
            .lock()
            .get(&i)
            .copied()
            .unwrap_or(user.has_face)
    }

    /// Enrols or removes user `i`'s face.
    pub fn set_has_face(&self, i: usize, has_face: bool) {
        self.enrolled.lock().insert(i, has_face);
    }

    /// The face of user `i`, generated on first use and kept.
    pub fn face(&self, i: usize, cropped: bool) -> Option<Arc<Vec<u8>>> {
        if !self.has_face(i) {
            return None;
        }
        let user = self.users.get(i)?;
        if let Some(face) = self.faces.lock().get(&(i, cropped)) {
            return Some(face.clone());
        }
        // Encoded outside the lock, so that concurrent requests are not
        // served one at a time; a rare duplicate encoding gives equal bytes.
        let (w, h) = if cropped {
            let side = self.spec.face_width.min(self.spec.face_height) * 3 / 4;
            (side, side)
        } else {
            (self.spec.face_width, self.spec.face_height)
        };
        let mut face = face_jpeg(user.seed ^ u64::from(cropped), w, h);
        if face.len() < self.spec.pad_faces_to {
            face.resize(self.spec.pad_faces_to, 0);
        }
        let face = Arc::new(face);
        let mut faces = self.faces.lock();
        Some(faces.entry((i, cropped)).or_insert(face).clone())
    }

    /// Replaces user `i`'s face, as a re-enrolment would.
    pub fn replace_face(&self, i: usize, cropped: bool, bytes: Vec<u8>) {
        self.faces.lock().insert((i, cropped), Arc::new(bytes));
    }

    /// Generates every face now, on all cores, so that no request pays for it.
    pub fn generate_all_faces(&self) {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|scope| {
            for t in 0..threads {
                scope.spawn(move || {
                    for i in (t..self.users.len()).step_by(threads) {
                        self.face(i, false);
                        self.face(i, true);
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_findable() {
        let tenant = Tenant::generate(TenantSpec::default());
        for (i, user) in tenant.users().iter().enumerate() {
            for kind in IdKind::ALL {
                assert_eq!(tenant.find(kind, user.id(kind)), Some(i));
            }
        }
        assert_eq!(tenant.users()[2].id(IdKind::UserId), "100%");
        assert!(tenant.users().iter().any(|u| !u.has_face));
    }

    #[test]
    fn full_and_cropped_faces_differ() {
        let tenant = Tenant::generate(TenantSpec::default());
        let full = tenant.face(0, false).unwrap();
        let cropped = tenant.face(0, true).unwrap();
        assert_ne!(full, cropped);
        let faceless = tenant.users().iter().position(|u| !u.has_face).unwrap();
        assert!(tenant.face(faceless, false).is_none());
    }
}
