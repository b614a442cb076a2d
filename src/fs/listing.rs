//! A directory's listing: every page of the user list, read whole or not at
//! all, so that no program ever sees a short directory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::error::{err, FsError};
use super::id_set::IdSet;
use super::layout::{self, FaceKey};
use crate::api::{ApiError, FaceApi, IdKind};
use crate::text::misleading;

/// Restarts of a listing whose page token the API stopped accepting.
const LISTING_RESTARTS: u32 = 3;
/// A listing longer than this is a broken API answer, not a tenant.
const MAX_LISTED_USERS: usize = 2_000_000;
/// Pages in a row that name no user not seen before: an API going round in
/// circles, not a tenant (a real page names up to 50 users, each once).
const MAX_PAGES_WITHOUT_NEW_USERS: u32 = 10;
/// No listing takes longer than this; 2,000,000 users at 50 a page and 5
/// requests a second would take under 2.3 hours, 100,000 under 7 minutes.
const MAX_LISTING_TIME: Duration = Duration::from_secs(3600);

/// The ids with a face, in the API's order, without repeats, packed: one
/// string holding them all, where each ends, and their order by text for
/// lookups by name — about 8 bytes an id besides the id itself.
#[derive(Clone)]
pub struct Listing {
    text: String,
    ends: Vec<u32>,
    /// Places in `ends`, sorted by their ids.
    by_id: Vec<u32>,
    /// The users the API listed without a face: a lookup of theirs is
    /// answered "does not exist" from the listing, without the API.
    without_face: IdSet,
    pub fetched_at: SystemTime,
}

impl Listing {
    /// Packs `ids`, which must hold no repeats.
    pub fn new(ids: Vec<String>, fetched_at: SystemTime) -> Listing {
        let mut text = String::with_capacity(ids.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(ids.len());
        for id in &ids {
            text.push_str(id);
            // At most 2,000,000 ids of at most 243 bytes: well inside u32.
            ends.push(text.len() as u32);
        }
        drop(ids);
        Listing::packed(text, ends, fetched_at)
    }

    /// The listing of these packed ids, ordered for lookups by name.
    fn packed(text: String, ends: Vec<u32>, fetched_at: SystemTime) -> Listing {
        let mut listing = Listing {
            text,
            ends,
            by_id: Vec::new(),
            without_face: IdSet::default(),
            fetched_at,
        };
        let mut by_id: Vec<u32> = (0..listing.ends.len() as u32).collect();
        by_id.sort_unstable_by(|a, b| listing.id(*a as usize).cmp(listing.id(*b as usize)));
        listing.by_id = by_id;
        listing
    }

    /// The packed ids and where each ends, for the on-disk store.
    pub fn parts(&self) -> (&str, &[u32]) {
        (&self.text, &self.ends)
    }

    /// This listing knowing these users to have no face (any it lists with
    /// a face are left out).
    pub fn with_users_without_face(mut self, mut ids: Vec<String>) -> Listing {
        ids.retain(|id| self.position(id).is_none());
        self.without_face = IdSet::from_ids(ids);
        self
    }

    /// This listing with `set` as its users without a face, read back from
    /// the store; `None` if one of them is also listed with a face.
    pub fn with_set_without_face(mut self, set: IdSet) -> Option<Listing> {
        let (text, ends) = set.parts();
        let mut start = 0;
        for end in ends {
            let id = &text[start..*end as usize];
            if self.position(id).is_some() || !layout::representable_id(id) {
                return None;
            }
            start = *end as usize;
        }
        self.without_face = set;
        Some(self)
    }

    /// The users listed without a face, for the on-disk store.
    pub fn users_without_face(&self) -> &IdSet {
        &self.without_face
    }

    /// Whether the API listed `id` without a face.
    pub fn shows_without_face(&self, id: &str) -> bool {
        self.without_face.contains(id)
    }

    /// A listing from [`Listing::parts`] read back, if they are parts of a
    /// listing: ids that are file names, each once.
    pub fn from_parts(text: String, ends: Vec<u32>, fetched_at: SystemTime) -> Option<Listing> {
        let mut start = 0usize;
        for end in &ends {
            let end = *end as usize;
            let id = text.get(start..end)?;
            if !layout::representable_id(id) {
                return None;
            }
            start = end;
        }
        if start != text.len() {
            return None;
        }
        let listing = Listing::packed(text, ends, fetched_at);
        let repeated = listing
            .by_id
            .windows(2)
            .any(|w| listing.id(w[0] as usize) == listing.id(w[1] as usize));
        (!repeated).then_some(listing)
    }

    /// Adds `id` at the end (false if it is listed or cannot be a file
    /// name). Costs the change, not the listing: an append, and one
    /// insertion into the order by name.
    pub fn add(&mut self, id: &str) -> bool {
        if !layout::representable_id(id) || self.position(id).is_some() {
            return false;
        }
        self.without_face.remove(id);
        self.text.push_str(id);
        self.ends.push(self.text.len() as u32);
        let new = (self.ends.len() - 1) as u32;
        let at = self.by_id.partition_point(|i| self.id(*i as usize) < id);
        self.by_id.insert(at, new);
        true
    }

    /// Shows `id` without a face (false if nothing changed): removed if it
    /// is listed — the bytes and places after it move down once, nothing
    /// is sorted again — and kept among the users without a face.
    pub fn remove(&mut self, id: &str) -> bool {
        let known = self.len() + self.without_face.len();
        let Ok(found) = self
            .by_id
            .binary_search_by(|i| self.id(*i as usize).cmp(id))
        else {
            // An unknown user: remembered, within the bound on users.
            return layout::representable_id(id)
                && known < MAX_LISTED_USERS
                && self.without_face.insert(id);
        };
        self.without_face.insert(id);
        let gone = self.by_id.remove(found) as usize;
        let start = if gone == 0 {
            0
        } else {
            self.ends[gone - 1] as usize
        };
        let end = self.ends[gone] as usize;
        self.text.replace_range(start..end, "");
        self.ends.remove(gone);
        let length = (end - start) as u32;
        for e in &mut self.ends[gone..] {
            *e -= length;
        }
        for i in &mut self.by_id {
            if *i as usize > gone {
                *i -= 1;
            }
        }
        true
    }

    /// The place of `id` in the API's order.
    fn position(&self, id: &str) -> Option<usize> {
        let found = self
            .by_id
            .binary_search_by(|i| self.id(*i as usize).cmp(id))
            .ok()?;
        Some(self.by_id[found] as usize)
    }

    /// Users listed.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id at place `i` in the API's order.
    pub fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// Files in directory order: each user's full face, then the cropped one.
    pub fn files(&self) -> usize {
        self.len() * 2
    }

    /// The file at `place` in directory order.
    pub fn file_at(&self, kind: IdKind, place: usize) -> Option<FaceKey> {
        (place / 2 < self.len()).then(|| FaceKey::new(kind, self.id(place / 2), place % 2 == 1))
    }

    pub fn place_of(&self, key: &FaceKey) -> Option<usize> {
        Some(2 * self.position(&key.id)? + usize::from(key.cropped))
    }

    /// Bytes this listing holds.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + 4 * (self.ends.capacity() + self.by_id.capacity())
            + self.without_face.heap_bytes()
    }
}

/// All pages of the user list of `kind`. Any page failing fails the whole
/// listing; a page token the API stops accepting restarts it. A listing that
/// does not end — a page token repeated, pages naming no new user, more time
/// than any tenant needs — fails with `EIO`, and so does one under way when
/// `stopping` is set (the mount is going away).
pub fn fetch(
    api: &dyn FaceApi,
    kind: IdKind,
    now: SystemTime,
    stopping: &AtomicBool,
) -> Result<Listing, FsError> {
    let doing = format!("listing the {kind} users");
    let started = Instant::now();
    let mut restarts = 0;
    'restart: loop {
        // Every user listed, with a face or not: the measure of progress.
        let mut seen = HashSet::new();
        let mut page_tokens = HashSet::new();
        let mut ids = Vec::new();
        let mut without_face = Vec::new();
        let mut skipped = 0usize;
        let mut misleading_ids = 0usize;
        let mut stalled_pages = 0;
        let mut page_token: Option<String> = None;
        // A listing is as old as its oldest page.
        let mut fetched_at = now;
        loop {
            if stopping.load(Ordering::SeqCst) {
                return Err(err!(libc::EIO, "{doing}: stopped, the mount is going away"));
            }
            if started.elapsed() > MAX_LISTING_TIME {
                return Err(err!(
                    libc::EIO,
                    "{doing}: not done after {MAX_LISTING_TIME:?}; treating the answers as broken"
                ));
            }
            let page = match api.list_users(kind, page_token.as_deref()) {
                Ok(page) => page,
                Err(ApiError::InvalidPageToken) if restarts < LISTING_RESTARTS => {
                    restarts += 1;
                    log::info!("the API no longer accepts the {kind} listing's page token; listing again from the start");
                    continue 'restart;
                }
                Err(e) => return Err(FsError::from_api(e, kind, &doing)),
            };
            if let Some(at) = page.fetched_at {
                fetched_at = fetched_at.min(at);
            }
            let known = seen.len();
            for user in page.users {
                if !seen.insert(user.user_id.clone()) {
                    continue;
                }
                if !user.face_uploaded {
                    if layout::representable_id(&user.user_id) {
                        without_face.push(user.user_id);
                    }
                    continue;
                }
                if layout::representable_id(&user.user_id) {
                    if user.user_id.chars().any(misleading) {
                        misleading_ids += 1;
                    }
                    ids.push(user.user_id);
                } else {
                    skipped += 1;
                }
            }
            skipped += page.unreadable_ids;
            stalled_pages = if seen.len() > known {
                0
            } else {
                stalled_pages + 1
            };
            if stalled_pages >= MAX_PAGES_WITHOUT_NEW_USERS {
                return Err(err!(
                    libc::EIO,
                    "{doing}: {stalled_pages} pages in a row named no new user; treating the answers as broken"
                ));
            }
            if seen.len() > MAX_LISTED_USERS {
                return Err(err!(
                    libc::EIO,
                    "{doing}: more than {MAX_LISTED_USERS} users; treating the answer as broken"
                ));
            }
            match page.next_page_token {
                Some(next) if !page_tokens.insert(next.clone()) => {
                    return Err(err!(
                        libc::EIO,
                        "{doing}: the API gave the same page token twice; treating the answers as broken"
                    ));
                }
                Some(next) => page_token = Some(next),
                None => break,
            }
        }
        if skipped > 0 {
            log::warn!("{skipped} {kind} ids cannot be file names (they are not UTF-8, hold '/', are '.' or '..', end in '.cropped' or are too long) and are not listed");
        }
        if misleading_ids > 0 {
            log::warn!("{misleading_ids} {kind} ids hold control or bidirectional-override characters; they are listed as they are (use find -print0 or ls -b in scripts)");
        }
        return Ok(Listing::new(ids, fetched_at).with_users_without_face(without_face));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::api::{FaceBytes, ImageType, ListedUser, Priority, UserPage};

    /// Adds and removals in place keep the API's order and the lookup by
    /// name exactly as a listing packed anew would have them.
    #[test]
    fn edits_in_place_match_a_listing_made_anew() {
        let mut state = 7u64;
        let mut model: Vec<String> = (0..50).map(|i| format!("ou_{i:03}")).collect();
        let mut without: std::collections::BTreeSet<String> = Default::default();
        let mut listing = Listing::new(model.clone(), SystemTime::UNIX_EPOCH);
        for _ in 0..2000 {
            let n = crate::hash::xorshift(&mut state) % 120;
            let id = format!("ou_{n:03}");
            let listed = model.contains(&id);
            if crate::hash::xorshift(&mut state).is_multiple_of(2) {
                assert_eq!(listing.add(&id), !listed);
                if !listed {
                    model.push(id.clone());
                }
                without.remove(&id);
            } else {
                // Listed or not, the user is now one without a face.
                assert_eq!(listing.remove(&id), listed || !without.contains(&id));
                model.retain(|m| *m != id);
                without.insert(id.clone());
            }
            assert_eq!(listing.shows_without_face(&id), without.contains(&id));
        }
        let anew = Listing::new(model.clone(), SystemTime::UNIX_EPOCH)
            .with_users_without_face(without.iter().cloned().collect());
        assert_eq!(listing.parts(), anew.parts());
        assert_eq!(listing.by_id, anew.by_id);
        assert_eq!(listing.users_without_face(), anew.users_without_face());
        for (i, id) in model.iter().enumerate() {
            assert_eq!(listing.position(id), Some(i));
        }
        assert!(!listing.add("a/b"), "not a file name");
        assert!(!listing.remove("a/b"));
    }

    /// A user list that never ends, in one of the ways a broken API can.
    struct Endless {
        new_tokens: bool,
        pages: AtomicUsize,
        stop_after: Option<(usize, Arc<AtomicBool>)>,
    }

    use std::sync::Arc;

    impl FaceApi for Endless {
        fn list_users(&self, _: IdKind, _: Option<&str>) -> Result<UserPage, ApiError> {
            let n = self.pages.fetch_add(1, Ordering::SeqCst);
            if let Some((after, stopping)) = &self.stop_after {
                if n + 1 >= *after {
                    stopping.store(true, Ordering::SeqCst);
                }
            }
            Ok(UserPage {
                users: vec![ListedUser {
                    user_id: "ou_same".into(),
                    face_uploaded: true,
                }],
                next_page_token: Some(if self.new_tokens {
                    format!("t{n}")
                } else {
                    "t".into()
                }),
                unreadable_ids: 0,
                fetched_at: None,
            })
        }

        fn get_face(
            &self,
            _: IdKind,
            _: &str,
            _: bool,
            _priority: Priority,
        ) -> Result<FaceBytes, ApiError> {
            unreachable!("a listing downloads no face")
        }

        fn put_face(&self, _: IdKind, _: &str, _: &[u8], _: ImageType) -> Result<(), ApiError> {
            unreachable!("a listing uploads no face")
        }
    }

    fn failure(api: &Endless, stopping: &AtomicBool) -> FsError {
        match fetch(api, IdKind::OpenId, SystemTime::now(), stopping) {
            Ok(_) => panic!("an endless listing ended"),
            Err(e) => e,
        }
    }

    fn endless(new_tokens: bool) -> Endless {
        Endless {
            new_tokens,
            pages: AtomicUsize::new(0),
            stop_after: None,
        }
    }

    #[test]
    fn a_packed_listing_finds_every_id_and_costs_eight_bytes_an_id() {
        let ids: Vec<String> = (0..1000).rev().map(|i| format!("ou_{i:04}")).collect();
        let listing = Listing::new(ids.clone(), SystemTime::now());
        assert_eq!(listing.len(), 1000);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(listing.id(i), id);
            for cropped in [false, true] {
                let key = FaceKey::new(IdKind::OpenId, id.as_str(), cropped);
                let place = listing.place_of(&key).unwrap();
                assert_eq!(place, 2 * i + usize::from(cropped));
                assert_eq!(listing.file_at(IdKind::OpenId, place), Some(key));
            }
        }
        assert_eq!(
            listing.place_of(&FaceKey::new(IdKind::OpenId, "ou_x", false)),
            None
        );
        assert_eq!(listing.file_at(IdKind::OpenId, 2000), None);
        assert_eq!(listing.heap_bytes(), 7 * 1000 + 8 * 1000);
    }

    #[test]
    fn ids_that_print_as_something_else_are_recognised() {
        for id in ["a\nb", "tab\there", "\u{202e}gpj.exe", "x\u{2066}y"] {
            assert!(id.chars().any(misleading), "{id:?}");
        }
        for id in ["ou_abc", "emp 001", "张伟", "100%"] {
            assert!(!id.chars().any(misleading), "{id:?}");
        }
    }

    #[test]
    fn a_repeated_page_token_ends_the_listing() {
        let api = endless(false);
        let err = failure(&api, &AtomicBool::new(false));
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.to_string().contains("same page token"), "{err}");
        assert_eq!(api.pages.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn pages_without_new_users_end_the_listing() {
        let api = endless(true);
        let err = failure(&api, &AtomicBool::new(false));
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.to_string().contains("no new user"), "{err}");
        // The first page names a user; ten more that name no new one.
        assert_eq!(
            api.pages.load(Ordering::SeqCst),
            1 + MAX_PAGES_WITHOUT_NEW_USERS as usize
        );
    }

    #[test]
    fn stopping_ends_a_listing_before_its_next_page() {
        let stopping = Arc::new(AtomicBool::new(false));
        let api = Endless {
            stop_after: Some((3, stopping.clone())),
            ..endless(true)
        };
        let err = failure(&api, &stopping);
        assert!(err.to_string().contains("going away"), "{err}");
        assert_eq!(api.pages.load(Ordering::SeqCst), 3);
    }
}
