//! The name layout of the mounted tree: which directories exist and how a
//! file name maps to a user id and face variant. Everything that knows the
//! strings `open_id`, `.jpg` or `.cropped.jpg` lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::api::IdKind;

/// The kind of id a top-level directory holds: its name is the API's
/// `user_id_type` value.
pub fn dir_kind(name: &OsStr) -> Option<IdKind> {
    IdKind::ALL
        .into_iter()
        .find(|k| k.as_str().as_bytes() == name.as_bytes())
}

/// One face file: a user id of one kind, full or cropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaceKey {
    pub kind: IdKind,
    pub id: String,
    pub cropped: bool,
}

impl FaceKey {
    pub fn new(kind: IdKind, id: impl Into<String>, cropped: bool) -> FaceKey {
        FaceKey {
            kind,
            id: id.into(),
            cropped,
        }
    }

    pub fn file_name(&self) -> String {
        face_file_name(&self.id, self.cropped)
    }

    /// FNV-1a over the kind, the variant, the id and `salt`: the same in
    /// every mount, for inode numbers and the store's file names.
    pub fn digest(&self, salt: &[u8]) -> u64 {
        let variant = [self.kind.index() as u8, u8::from(self.cropped)];
        crate::hash::digest_of_parts(&[&variant, self.id.as_bytes(), salt])
    }
}

const FULL_SUFFIX: &str = ".jpg";
const CROPPED_SUFFIX: &str = ".cropped.jpg";
/// Linux's NAME_MAX: a longer name cannot be looked up, so a longer id cannot be shown.
const NAME_MAX: usize = 255;

pub fn face_file_name(id: &str, cropped: bool) -> String {
    let suffix = if cropped { CROPPED_SUFFIX } else { FULL_SUFFIX };
    format!("{id}{suffix}")
}

/// Parses `<id>.jpg` or `<id>.cropped.jpg` into `(id, cropped)`.
///
/// Returns `None` for any name outside the layout; such a name is `ENOENT`
/// without an API request. The cropped reading wins, so an id that itself ends
/// in `.cropped` has no reachable full face (see [`representable_id`]).
pub fn parse_face_name(name: &OsStr) -> Option<(String, bool)> {
    let name = std::str::from_utf8(name.as_bytes()).ok()?;
    let (id, cropped) = if let Some(id) = name.strip_suffix(CROPPED_SUFFIX) {
        (id, true)
    } else {
        (name.strip_suffix(FULL_SUFFIX)?, false)
    };
    if !representable_id(id) {
        return None;
    }
    Some((id.to_owned(), cropped))
}

/// Whether both files of this id can appear in a directory: a file name
/// cannot hold `/` or NUL, nor exceed NAME_MAX; an id ending in `.cropped`
/// would make `<id>.jpg` read as another user's cropped face; and URL
/// parsers fold a `.` or `..` path segment, even percent-encoded, so such an
/// id could never be sent as itself.
pub fn representable_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains(['/', '\0'])
        && !id.ends_with(".cropped")
        && id.len() + CROPPED_SUFFIX.len() <= NAME_MAX
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn parse(s: &str) -> Option<(String, bool)> {
        parse_face_name(OsStr::new(s))
    }

    #[test]
    fn parses_full_and_cropped() {
        assert_eq!(parse("ou_abc.jpg"), Some(("ou_abc".into(), false)));
        assert_eq!(parse("ou_abc.cropped.jpg"), Some(("ou_abc".into(), true)));
        assert_eq!(parse("a b+c%?#张.jpg"), Some(("a b+c%?#张".into(), false)));
        assert_eq!(parse("x.jpg.jpg"), Some(("x.jpg".into(), false)));
    }

    #[test]
    fn rejects_names_outside_the_layout() {
        for name in [
            "x.png",
            "abc",
            ".jpg",
            ".cropped.jpg",
            "x.JPG",
            "x.jpeg",
            "",
            "x.cropped.jpg.bak",
        ] {
            assert_eq!(parse(name), None, "{name:?}");
        }
        assert_eq!(parse("y.cropped.cropped.jpg"), None);
        assert_eq!(
            parse("...jpg"),
            None,
            "the id '..' cannot be sent as a path segment"
        );
        let long = format!("{}.jpg", "a".repeat(250));
        assert_eq!(parse(&long), None);
        let invalid = OsString::from_vec(vec![0xff, 0xfe, b'.', b'j', b'p', b'g']);
        assert_eq!(parse_face_name(&invalid), None);
    }

    #[test]
    fn file_names_round_trip() {
        for id in ["ou_1", "emp 007", "100%", "q?x#y", "用户"] {
            for cropped in [false, true] {
                let key = FaceKey::new(IdKind::UserId, id, cropped);
                assert_eq!(parse(&key.file_name()), Some((id.to_owned(), cropped)));
            }
        }
    }

    /// Random names, invalid UTF-8 and huge ones included: no panic, and
    /// whatever parses maps back to exactly the same name.
    #[test]
    fn random_names_parse_or_are_refused() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"ab./%?# +\xff\x00jpgcroped\xe5\xbc\xa0";
        for _ in 0..50_000 {
            crate::hash::xorshift(&mut seed);
            let len = (seed % 300) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            if seed.is_multiple_of(3) {
                bytes.extend_from_slice(if seed.is_multiple_of(2) {
                    b".jpg"
                } else {
                    b".cropped.jpg"
                });
            }
            let name = OsString::from_vec(bytes);
            if let Some((id, cropped)) = parse_face_name(&name) {
                assert!(representable_id(&id));
                assert_eq!(face_file_name(&id, cropped).as_bytes(), name.as_bytes());
            }
        }
    }

    #[test]
    fn directory_names() {
        for kind in IdKind::ALL {
            assert_eq!(dir_kind(OsStr::new(kind.as_str())), Some(kind));
            assert_eq!(IdKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(dir_kind(OsStr::new("open_ids")), None);
    }
}
