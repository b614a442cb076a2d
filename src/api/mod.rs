//! The client side of the Feishu ACS API: a trait the filesystem core calls,
//! the real HTTP implementation, an in-memory one for tests, and the retry
//! wrapper that sits between them and the core.

pub mod codes;
pub mod failure;
pub mod http;
pub mod id_kind;
pub mod image;
pub mod memory;
pub mod metrics;
pub mod origin;
pub mod retry;
pub mod secret;
pub mod throttle;
pub mod token;

use std::fmt;
use std::time::Duration;

pub use self::id_kind::IdKind;
pub use self::image::ImageType;
pub use self::throttle::Priority;
use crate::sync::byte_budget::MemoryHold;

/// The API's endpoints, as facefs's metrics, logs and fault injection name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /open-apis/auth/v3/tenant_access_token/internal`
    Token,
    /// `GET /open-apis/acs/v1/users`
    List,
    /// `GET /open-apis/acs/v1/users/:user_id/face`
    Face,
    /// `PUT /open-apis/acs/v1/users/:user_id/face`
    Upload,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Token,
        Endpoint::List,
        Endpoint::Face,
        Endpoint::Upload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::List => "list",
            Endpoint::Face => "face",
            Endpoint::Upload => "upload",
        }
    }
}

/// One page of `GET /open-apis/acs/v1/users`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<ListedUser>,
    /// The token for the next page; `None` once `has_more` is false.
    pub next_page_token: Option<String>,
    /// Ids on the page that are not text (invalid UTF-8, lone surrogates):
    /// left out, since no file name could name them.
    pub unreadable_ids: usize,
    /// When the API sent the page, if before this call (another mount of
    /// the fleet fetched it); `None`: just now.
    pub fetched_at: Option<std::time::SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedUser {
    pub user_id: String,
    pub face_uploaded: bool,
}

/// The operations facefs needs from the API. Implementations must be safe to
/// call from many threads at once.
pub trait FaceApi: Send + Sync {
    /// One page of users, ids in `kind`; `page_token` is `None` for the first page.
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError>;

    /// The bytes of one face, exactly as the API sent them; `priority`
    /// orders it against others waiting for a turn of the rate limit.
    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        priority: Priority,
    ) -> Result<FaceBytes, ApiError>;

    /// Replaces the user's face with `image` (the service makes the crop).
    /// A PUT: sending it twice leaves what sending it once does, so a
    /// retry after a lost answer cannot upload anything wrong.
    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError>;
}

/// A face's bytes as downloaded, holding their share of the memory budget
/// (see [`crate::sync::byte_budget`]) for as long as they are kept.
pub struct FaceBytes {
    pub bytes: Vec<u8>,
    pub held: MemoryHold,
    /// When the API sent them, if before this call (another mount of the
    /// fleet fetched them); `None`: just now.
    pub fetched_at: Option<std::time::SystemTime>,
}

impl FaceBytes {
    /// Bytes no budget counts: the in-memory fake's.
    pub fn unbudgeted(bytes: Vec<u8>) -> FaceBytes {
        FaceBytes {
            bytes,
            held: MemoryHold::none(),
            fetched_at: None,
        }
    }
}

impl fmt::Debug for FaceBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaceBytes({} bytes)", self.bytes.len())
    }
}

impl PartialEq for FaceBytes {
    fn eq(&self, other: &FaceBytes) -> bool {
        self.bytes == other.bytes
    }
}

/// What the API (or the way to it) answered instead of success.
///
/// "Does not exist" has variants of its own: they are the only answers that
/// may ever become `ENOENT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the user does not exist (code {})", codes::USER_NOT_FOUND)]
    UserNotFound,
    #[error("the user has no face (code {})", codes::FACE_NOT_FOUND)]
    FaceNotFound,
    #[error(
        "the page token is no longer valid (code {})",
        codes::INVALID_PAGE_TOKEN
    )]
    InvalidPageToken,
    #[error("permission denied: {0}; grant the app the scope in the developer console")]
    PermissionDenied(ApiFailure),
    #[error("the app's credentials were refused: {0}")]
    BadCredentials(ApiFailure),
    #[error("throttled by the API{}: {failure}", retry_after.map(|d| format!(" for {d:?}")).unwrap_or_default())]
    Throttled {
        retry_after: Option<Duration>,
        failure: ApiFailure,
    },
    /// Worth retrying: network errors, timeouts, 5xx, internal error codes, cut bodies.
    #[error("transient failure: {0}")]
    Transient(ApiFailure),
    /// The service could not use an uploaded image (no face to crop).
    #[error("the service refused the image: {0}")]
    ImageRefused(ApiFailure),
    /// A definite refusal that retrying will not change.
    #[error("the API refused the request: {0}")]
    Failed(ApiFailure),
    /// Not sent: a read-ahead found no turn of the rate limit soon enough
    /// ([`Priority::Ahead`]). Says nothing of the face.
    #[error("not sent: no turn of --rate-limit soon enough for a read-ahead")]
    Deferred,
}

impl ApiError {
    /// The API said the user or face does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::UserNotFound | ApiError::FaceNotFound)
    }

    /// The service gave no answer about the face itself: it is down,
    /// throttling past the retry budget, or out of monthly quota. (Not
    /// found, a refused permission or credentials are answers.)
    pub fn is_outage(&self) -> bool {
        match self {
            ApiError::Transient(_) | ApiError::Throttled { .. } => true,
            ApiError::Failed(failure) => failure.code == Some(codes::QUOTA_EXHAUSTED),
            _ => false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Transient(_) | ApiError::Throttled { .. })
    }
}

/// The details support asks for: HTTP status, API code and message, log id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: Option<u16>,
    pub code: Option<i64>,
    pub msg: String,
    pub log_id: Option<String>,
}

impl ApiFailure {
    pub fn message(msg: impl Into<String>) -> ApiFailure {
        ApiFailure {
            msg: msg.into(),
            ..ApiFailure::default()
        }
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message and log id are the server's words: escaped, bounded.
        match self.msg.is_empty() {
            true => f.write_str("no message")?,
            false => write!(f, "{}", crate::text::shown_up_to(&self.msg, 300))?,
        }
        if let Some(code) = self.code {
            write!(f, " (code {code})")?;
        }
        if let Some(status) = self.status {
            write!(f, " [HTTP {status}]")?;
        }
        if let Some(log_id) = &self.log_id {
            write!(f, " [log id {}]", crate::text::shown(log_id))?;
        }
        Ok(())
    }
}
