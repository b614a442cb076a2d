//! Scripted failures around any client: a [`FailureApi`] wraps a
//! [`FaceApi`] and answers the next calls of an endpoint with the faults it
//! was given, in order, before passing calls through again. Any layer above
//! the client can so be tested against any failure.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    ApiError, ApiFailure, Endpoint, FaceApi, FaceBytes, IdKind, ImageType, Priority, UserPage,
};
use crate::sync::gate::Gate;

/// What to answer instead of calling the wrapped client.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Call the wrapped client as usual: keeps a place in the script.
    Pass,
    Transient,
    Throttled(Duration),
    PermissionDenied,
    InvalidPageToken,
    BadCredentials,
    /// The tenant's monthly quota is used up (99991403).
    QuotaExhausted,
    /// The user does not exist (1490101).
    UserNotFound,
    /// An uploaded image without a usable face (1490108).
    ImageRefused,
    /// Not sent: no turn soon enough for a read-ahead.
    Deferred,
    /// Wait at the gate, then call the wrapped client: a request that hangs
    /// until the test lets it go.
    Hold(Arc<Gate>),
}

impl Fault {
    fn error(&self) -> Option<ApiError> {
        let failure = || ApiFailure::message("injected");
        Some(match self {
            Fault::Pass | Fault::Hold(_) => return None,
            Fault::Transient => ApiError::Transient(failure()),
            Fault::Throttled(d) => ApiError::Throttled {
                retry_after: Some(*d),
                failure: failure(),
            },
            Fault::PermissionDenied => ApiError::PermissionDenied(failure()),
            Fault::InvalidPageToken => ApiError::InvalidPageToken,
            Fault::BadCredentials => ApiError::BadCredentials(failure()),
            Fault::QuotaExhausted => ApiError::Failed(ApiFailure {
                code: Some(super::codes::QUOTA_EXHAUSTED),
                ..failure()
            }),
            Fault::UserNotFound => ApiError::UserNotFound,
            Fault::ImageRefused => ApiError::ImageRefused(ApiFailure {
                code: Some(super::codes::FACE_UNUSABLE),
                ..failure()
            }),
            Fault::Deferred => ApiError::Deferred,
        })
    }
}

pub struct FailureApi<A> {
    inner: A,
    scripts: Mutex<HashMap<Endpoint, VecDeque<Fault>>>,
    /// Calls per endpoint (in the order of `Endpoint::ALL`), faulted ones included.
    calls: [AtomicUsize; Endpoint::ALL.len()],
}

impl<A: FaceApi> FailureApi<A> {
    pub fn new(inner: A) -> FailureApi<A> {
        FailureApi {
            inner,
            scripts: Mutex::new(HashMap::new()),
            calls: Default::default(),
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The next calls of `endpoint` answer these faults, in order. Faults of
    /// [`Endpoint::Token`] fail the next call of any endpoint, as a token
    /// renewal failing under it would.
    pub fn fail_next(&self, endpoint: Endpoint, faults: impl IntoIterator<Item = Fault>) {
        self.scripts
            .lock()
            .entry(endpoint)
            .or_default()
            .extend(faults);
    }

    /// Calls of `endpoint` so far, those answered with a fault included: the
    /// requests a real API would have seen.
    pub fn requests(&self, endpoint: Endpoint) -> usize {
        self.calls[endpoint as usize].load(Ordering::SeqCst)
    }

    fn next_fault(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        self.calls[endpoint as usize].fetch_add(1, Ordering::SeqCst);
        let fault = {
            let mut scripts = self.scripts.lock();
            [Endpoint::Token, endpoint]
                .iter()
                .find_map(|e| scripts.get_mut(e)?.pop_front())
        };
        if let Some(Fault::Hold(gate)) = &fault {
            gate.pass();
        }
        match fault.and_then(|f| f.error()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl<A: FaceApi> FaceApi for FailureApi<A> {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        self.next_fault(Endpoint::List)?;
        self.inner.list_users(kind, page_token)
    }

    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        priority: Priority,
    ) -> Result<FaceBytes, ApiError> {
        self.next_fault(Endpoint::Face)?;
        self.inner.get_face(kind, id, cropped, priority)
    }

    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError> {
        self.next_fault(Endpoint::Upload)?;
        self.inner.put_face(kind, id, image, image_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::memory::MemoryApi;

    fn api() -> FailureApi<MemoryApi> {
        let memory = MemoryApi::new();
        memory.add_user(&["ou_a", "on_a", "a"], Some(b"face".to_vec()), None);
        FailureApi::new(memory)
    }

    #[test]
    fn faults_follow_their_script_per_endpoint() {
        let api = api();
        api.fail_next(
            Endpoint::Face,
            [Fault::Transient, Fault::Pass, Fault::PermissionDenied],
        );
        api.fail_next(Endpoint::List, [Fault::InvalidPageToken]);
        let face = || api.get_face(IdKind::OpenId, "ou_a", false, Priority::Listed);
        assert!(matches!(face(), Err(ApiError::Transient(_))));
        assert_eq!(face().unwrap().bytes, b"face");
        assert!(matches!(face(), Err(ApiError::PermissionDenied(_))));
        assert_eq!(face().unwrap().bytes, b"face", "the script is used up");
        assert_eq!(
            api.list_users(IdKind::OpenId, None),
            Err(ApiError::InvalidPageToken)
        );
        assert_eq!(api.list_users(IdKind::OpenId, None).unwrap().users.len(), 1);
        assert_eq!(
            api.inner().face_requests(),
            2,
            "faults never reach the client"
        );
        assert_eq!(api.requests(Endpoint::Face), 4);
        assert_eq!(api.requests(Endpoint::List), 2);
    }

    #[test]
    fn token_faults_fail_whichever_call_comes_next() {
        let api = api();
        api.fail_next(Endpoint::Token, [Fault::BadCredentials]);
        assert!(matches!(
            api.list_users(IdKind::UnionId, None),
            Err(ApiError::BadCredentials(_))
        ));
        assert!(api
            .get_face(IdKind::OpenId, "ou_a", false, Priority::Listed)
            .is_ok());
    }
}
