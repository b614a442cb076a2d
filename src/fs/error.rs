//! Filesystem errors: the one place that decides which errno a program sees
//! for which API answer, and how loudly each failure is logged.
//!
//! An [`FsError`] carries its errno, a message for the log, the error that
//! caused it (the API's answer, a store's I/O error; any `std::error::Error`,
//! kept whole so the log shows its kind and chain) and the level to log it
//! at. The core only builds errors; the FUSE adapter is the one place that
//! logs, counts and replies.

use std::fmt;
use std::sync::Arc;

use crate::api::{codes, ApiError, IdKind};

/// A failed filesystem operation.
#[derive(Clone, Debug)]
pub struct FsError {
    errno: i32,
    message: String,
    /// Shared, not boxed: single-flight hands one error to every waiter.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    level: log::Level,
    /// For `ENOENT` that facefs trusts for a while: how long the kernel
    /// may keep the absence (a negative entry).
    cached_for: Option<std::time::Duration>,
}

/// Builds an [`FsError`]: `err!(libc::EIO, "listing {kind} failed")`, with
/// an optional `source: error,` first to keep what caused it.
macro_rules! err {
    (source: $source:expr, $errno:expr, $($message:tt)+) => {
        $crate::fs::error::FsError::new($errno, format!($($message)+)).with_source($source)
    };
    ($errno:expr, $($message:tt)+) => {
        $crate::fs::error::FsError::new($errno, format!($($message)+))
    };
}
pub(crate) use err;

impl FsError {
    /// An error with `errno`, logged at the level that errno deserves:
    /// answers a program expects (no such file, read-only) only at debug.
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        let level = match errno {
            libc::ENOENT | libc::EROFS | libc::ENOTDIR | libc::EISDIR | libc::EBADF => {
                log::Level::Debug
            }
            libc::EACCES => log::Level::Error,
            _ => log::Level::Warn,
        };
        FsError {
            errno,
            message: message.into(),
            source: None,
            level,
            cached_for: None,
        }
    }

    /// The same error, which the kernel may keep for `ttl` (for `ENOENT`).
    pub fn cached_for(mut self, ttl: std::time::Duration) -> FsError {
        self.cached_for = Some(ttl);
        self
    }

    /// How long the kernel may keep this answer, if it may.
    pub fn kernel_ttl(&self) -> Option<std::time::Duration> {
        self.cached_for.filter(|ttl| !ttl.is_zero())
    }

    pub fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> FsError {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same error, logged at `level`.
    pub fn at_level(mut self, level: log::Level) -> FsError {
        self.level = level;
        self
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    pub fn level(&self) -> log::Level {
        self.level
    }

    /// The API's answer that caused this, if one did.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.source.as_deref()?.downcast_ref()
    }

    /// A read-ahead that was not sent ([`ApiError::Deferred`]): says
    /// nothing of the face.
    pub fn is_deferred(&self) -> bool {
        matches!(self.api_error(), Some(ApiError::Deferred))
    }

    /// Maps the API's answer to an operation on `kind` ids. Only "does not
    /// exist" becomes `ENOENT`: to `rsync --delete` a false `ENOENT` deletes
    /// a backup, so everything transient or unknown is `EIO`.
    pub fn from_api(source: ApiError, kind: IdKind, doing: &str) -> FsError {
        match &source {
            ApiError::UserNotFound | ApiError::FaceNotFound => {
                err!(source: source, libc::ENOENT, "{doing}: not found")
            }
            ApiError::PermissionDenied(_) => err!(
                source: source,
                libc::EACCES,
                "{doing}: the API denied access to {kind} ids; grant the app the scope(s) {} in the developer console",
                codes::required_scopes(kind)
            ),
            ApiError::ImageRefused(_) => err!(
                source: source,
                libc::EINVAL,
                "{doing}: the service found no face it can use in the image"
            ),
            _ => err!(source: source, libc::EIO, "{doing} failed"),
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // The whole chain: a store error names the file, its cause the
        // system's word for what went wrong.
        let mut cause = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiFailure;

    #[test]
    fn only_not_found_answers_are_enoent() {
        let f = ApiFailure::message;
        let cases = [
            (ApiError::UserNotFound, libc::ENOENT),
            (ApiError::FaceNotFound, libc::ENOENT),
            (ApiError::PermissionDenied(f("x")), libc::EACCES),
            (ApiError::Transient(f("x")), libc::EIO),
            (
                ApiError::Throttled {
                    retry_after: None,
                    failure: f("x"),
                },
                libc::EIO,
            ),
            (ApiError::Failed(f("x")), libc::EIO),
            (ApiError::BadCredentials(f("x")), libc::EIO),
            (ApiError::InvalidPageToken, libc::EIO),
            (ApiError::ImageRefused(f("x")), libc::EINVAL),
        ];
        for (err, errno) in cases {
            let text = format!("{err:?}");
            assert_eq!(
                FsError::from_api(err, IdKind::UserId, "test").errno(),
                errno,
                "{text}"
            );
        }
    }

    #[test]
    fn the_message_keeps_the_api_answer_and_names_the_fix() {
        let failure = ApiFailure {
            status: Some(500),
            code: Some(5000),
            msg: "internal error".into(),
            log_id: Some("L1".into()),
        };
        let e = FsError::from_api(
            ApiError::Transient(failure),
            IdKind::OpenId,
            "downloading an open_id face",
        );
        assert_eq!(e.level(), log::Level::Warn);
        let text = e.to_string();
        assert!(
            text.starts_with("downloading an open_id face failed: "),
            "{text}"
        );
        assert!(
            text.contains("(code 5000) [HTTP 500] [log id L1]"),
            "{text}"
        );
        let denied = FsError::from_api(
            ApiError::PermissionDenied(ApiFailure::message("no scope")),
            IdKind::UserId,
            "listing user_id",
        );
        assert_eq!(denied.level(), log::Level::Error);
        assert!(denied
            .to_string()
            .contains("contact:user.employee_id:readonly"));
        assert_eq!(err!(libc::ENOENT, "x").level(), log::Level::Debug);
    }
}
