//! A directory's listing: every page of the user list, read whole or not at
//! all, so that no program ever sees a short directory.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::error::{err, FsError};
use super::layout::{self, FaceKey};
use crate::api::{ApiError, FaceApi, IdKind};

/// Restarts of a listing whose page token the API stopped accepting.
const LISTING_RESTARTS: u32 = 3;
/// A listing longer than this is a broken API answer, not a tenant.
const MAX_LISTED_USERS: usize = 2_000_000;

pub struct Listing {
    /// Ids with a face, in the API's order, without repeats.
    pub ids: Vec<String>,
    /// Each id's place in `ids`.
    positions: HashMap<String, usize>,
    pub fetched_at: Instant,
}

impl Listing {
    /// Files in directory order: each user's full face, then the cropped one.
    pub fn files(&self) -> usize {
        self.ids.len() * 2
    }

    /// The file at `place` in directory order.
    pub fn file_at(&self, kind: IdKind, place: usize) -> Option<FaceKey> {
        self.ids
            .get(place / 2)
            .map(|id| FaceKey::new(kind, id.as_str(), place % 2 == 1))
    }

    pub fn place_of(&self, key: &FaceKey) -> Option<usize> {
        self.positions
            .get(&key.id)
            .map(|i| 2 * i + usize::from(key.cropped))
    }
}

/// All pages of the user list of `kind`. Any page failing fails the whole
/// listing; a page token the API stops accepting restarts it.
pub fn fetch(api: &dyn FaceApi, kind: IdKind, now: Instant) -> Result<Listing, FsError> {
    let doing = format!("listing the {kind} users");
    let mut restarts = 0;
    'restart: loop {
        let mut seen = HashSet::new();
        let mut ids = Vec::new();
        let mut skipped = 0usize;
        let mut page_token: Option<String> = None;
        loop {
            let page = match api.list_users(kind, page_token.as_deref()) {
                Ok(page) => page,
                Err(ApiError::InvalidPageToken) if restarts < LISTING_RESTARTS => {
                    restarts += 1;
                    log::info!("the API no longer accepts the {kind} listing's page token; listing again from the start");
                    continue 'restart;
                }
                Err(e) => return Err(FsError::from_api(e, kind, &doing)),
            };
            for user in page.users.into_iter().filter(|u| u.face_uploaded) {
                if !layout::representable_id(&user.user_id) {
                    skipped += 1;
                } else if seen.insert(user.user_id.clone()) {
                    ids.push(user.user_id);
                }
            }
            if ids.len() > MAX_LISTED_USERS {
                return Err(err!(
                    libc::EIO,
                    "{doing}: more than {MAX_LISTED_USERS} users; treating the answer as broken"
                ));
            }
            match page.next_page_token {
                Some(next) => page_token = Some(next),
                None => break,
            }
        }
        if skipped > 0 {
            log::warn!("{skipped} {kind} ids cannot be file names (they hold '/', are '.' or '..', end in '.cropped' or are too long) and are not listed");
        }
        let positions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        return Ok(Listing {
            ids,
            positions,
            fetched_at: now,
        });
    }
}
