//! An in-memory tenant behind the `FaceApi` trait, for tests of everything
//! above the HTTP client. It counts requests; [`super::failure::FailureApi`]
//! around it makes it fail.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{ApiError, FaceApi, FaceBytes, ImageType, ListedUser, Priority, UserPage};
use crate::api::IdKind;

struct User {
    /// Ids in the order of `IdKind::ALL`.
    ids: [String; 3],
    full: Option<Vec<u8>>,
    cropped: Option<Vec<u8>>,
}

pub struct MemoryApi {
    users: Mutex<Vec<User>>,
    page_size: usize,
    face_requests: AtomicUsize,
    list_requests: AtomicUsize,
    uploads: Mutex<Vec<Upload>>,
}

/// An upload as the service received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub kind: IdKind,
    pub id: String,
    pub image: Vec<u8>,
    pub image_type: ImageType,
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
            page_size,
            face_requests: AtomicUsize::new(0),
            list_requests: AtomicUsize::new(0),
            uploads: Mutex::new(Vec::new()),
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

    pub fn face_requests(&self) -> usize {
        self.face_requests.load(Ordering::SeqCst)
    }

    pub fn list_requests(&self) -> usize {
        self.list_requests.load(Ordering::SeqCst)
    }

    /// Every upload received, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.uploads.lock().clone()
    }
}

fn slot(kind: IdKind) -> usize {
    kind.index()
}

impl FaceApi for MemoryApi {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        self.list_requests.fetch_add(1, Ordering::SeqCst);
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
            unreadable_ids: 0,
            fetched_at: None,
        })
    }

    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        _priority: Priority,
    ) -> Result<FaceBytes, ApiError> {
        self.face_requests.fetch_add(1, Ordering::SeqCst);
        let users = self.users.lock();
        let user = users
            .iter()
            .find(|u| u.ids[slot(kind)] == id)
            .ok_or(ApiError::UserNotFound)?;
        let face = if cropped { &user.cropped } else { &user.full };
        face.clone()
            .map(FaceBytes::unbudgeted)
            .ok_or(ApiError::FaceNotFound)
    }

    /// Keeps the bytes as the full face; the crop is the same bytes
    /// reversed, so that tests can tell them apart.
    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError> {
        let mut users = self.users.lock();
        let user = users
            .iter_mut()
            .find(|u| u.ids[slot(kind)] == id)
            .ok_or(ApiError::UserNotFound)?;
        user.full = Some(image.to_vec());
        user.cropped = Some(image.iter().rev().copied().collect());
        self.uploads.lock().push(Upload {
            kind,
            id: id.to_owned(),
            image: image.to_vec(),
            image_type,
        });
        Ok(())
    }
}
