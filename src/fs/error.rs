//! Filesystem errors and their errno: the one place that decides which API
//! answer a program sees as which error.

use crate::api::IdKind;
use crate::api::{codes, ApiError};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The API said the user or face does not exist, or the name is outside the layout.
    #[error("no such file or directory")]
    NotFound,
    #[error("read-only file system")]
    ReadOnly,
    #[error("permission denied")]
    PermissionDenied,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("bad file handle")]
    BadHandle,
    /// Answering needs the API; the caller may retry on a thread that can wait.
    #[error("would block")]
    WouldBlock,
    /// Everything else: transient failures after their retries, refusals, bad answers.
    #[error("input/output error")]
    Io,
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::PermissionDenied => libc::EACCES,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Io => libc::EIO,
        }
    }

    /// Maps an API error for an operation on `kind` ids. The failure itself
    /// was logged where it happened (the retry layer); a missing scope is
    /// logged here, where the directory that needs it is known.
    pub fn from_api(err: &ApiError, kind: IdKind) -> FsError {
        match err {
            ApiError::UserNotFound | ApiError::FaceNotFound => FsError::NotFound,
            ApiError::PermissionDenied(failure) => {
                log::error!(
                    "the API denied access to {kind} faces: {failure}; the app needs the scope(s) {}",
                    codes::required_scopes(kind)
                );
                FsError::PermissionDenied
            }
            _ => FsError::Io,
        }
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
        ];
        for (err, errno) in cases {
            assert_eq!(
                FsError::from_api(&err, IdKind::UserId).errno(),
                errno,
                "{err:?}"
            );
        }
    }
}
