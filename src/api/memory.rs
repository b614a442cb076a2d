//! An in-memory tenant behind the `FaceApi` trait, for tests of everything
//! above the HTTP client. It counts requests and can be told to fail.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{ApiError, ApiFailure, FaceApi, ListedUser, UserPage};
use crate::api::IdKind;

/// A failure to give instead of the next answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this request normally.
    Pass,
    Transient,
    Throttled(Duration),
    PermissionDenied,
    InvalidPageToken,
}

impl Fault {
    fn error(&self) -> Option<ApiError> {
        let failure = || ApiFailure::message("injected");
        Some(match self {
            Fault::Pass => return None,
            Fault::Transient => ApiError::Transient(failure()),
            Fault::Throttled(d) => ApiError::Throttled {
                retry_after: Some(*d),
                failure: failure(),
            },
            Fault::PermissionDenied => ApiError::PermissionDenied(failure()),
            Fault::InvalidPageToken => ApiError::InvalidPageToken,
        })
    }
}

struct User {
    /// Ids in the order of `IdKind::ALL`.
    ids: [String; 3],
    full: Option<Vec<u8>>,
    cropped: Option<Vec<u8>>,
}

pub struct MemoryApi {
    users: Mutex<Vec<User>>,
    faults: Mutex<VecDeque<Fault>>,
    page_size: usize,
    face_requests: AtomicUsize,
    list_requests: AtomicUsize,
}

impl Default for MemoryApi {
    fn default() -> MemoryApi {
        MemoryApi::new()
    }
}

impl MemoryApi {
    pub fn new() -> MemoryApi {
        MemoryApi::with_page_size(2)
    }

    pub fn with_page_size(page_size: usize) -> MemoryApi {
        MemoryApi {
            users: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            page_size,
            face_requests: AtomicUsize::new(0),
            list_requests: AtomicUsize::new(0),
        }
    }

    /// Adds a user with ids `[open_id, union_id, user_id]`; no full face means no face at all.
    pub fn add_user(&self, ids: &[&str; 3], full: Option<Vec<u8>>, cropped: Option<Vec<u8>>) {
        let ids = ids.map(str::to_owned);
        self.users.lock().push(User { ids, full, cropped });
    }

    /// Replaces a user's faces, as a re-enrolment would.
    pub fn set_faces(&self, open_id: &str, full: Option<Vec<u8>>, cropped: Option<Vec<u8>>) {
        let mut users = self.users.lock();
        let user = users
            .iter_mut()
            .find(|u| u.ids[0] == open_id)
            .expect("no such user");
        user.full = full;
        user.cropped = cropped;
    }

    /// The next requests fail with these faults, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().extend(faults);
    }

    pub fn face_requests(&self) -> usize {
        self.face_requests.load(Ordering::SeqCst)
    }

    pub fn list_requests(&self) -> usize {
        self.list_requests.load(Ordering::SeqCst)
    }

    fn next_fault(&self) -> Result<(), ApiError> {
        match self.faults.lock().pop_front().and_then(|f| f.error()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

fn slot(kind: IdKind) -> usize {
    IdKind::ALL.iter().position(|k| *k == kind).unwrap()
}

impl FaceApi for MemoryApi {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        self.list_requests.fetch_add(1, Ordering::SeqCst);
        self.next_fault()?;
        let start = match page_token {
            None => 0,
            Some(t) => t
                .strip_prefix("page:")
                .and_then(|n| n.parse().ok())
                .ok_or(ApiError::InvalidPageToken)?,
        };
        let users = self.users.lock();
        let end = (start + self.page_size).min(users.len());
        let page = users.get(start..end).unwrap_or_default();
        Ok(UserPage {
            users: page
                .iter()
                .map(|u| ListedUser {
                    user_id: u.ids[slot(kind)].clone(),
                    face_uploaded: u.full.is_some(),
                })
                .collect(),
            next_page_token: (end < users.len()).then(|| format!("page:{end}")),
        })
    }

    fn get_face(&self, kind: IdKind, id: &str, cropped: bool) -> Result<Vec<u8>, ApiError> {
        self.face_requests.fetch_add(1, Ordering::SeqCst);
        self.next_fault()?;
        let users = self.users.lock();
        let user = users
            .iter()
            .find(|u| u.ids[slot(kind)] == id)
            .ok_or(ApiError::UserNotFound)?;
        let face = if cropped { &user.cropped } else { &user.full };
        face.clone().ok_or(ApiError::FaceNotFound)
    }
}
