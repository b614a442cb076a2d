//! The Feishu API's error codes and how each one is classified. Shared by the
//! HTTP client (to read answers) and the emulator (to give them).

use std::time::Duration;

use super::{ApiError, ApiFailure};
use crate::api::IdKind;

pub const USER_NOT_FOUND: i64 = 1490101;
pub const FACE_NOT_FOUND: i64 = 1490107;
pub const INVALID_PAGE_TOKEN: i64 = 1490018;
/// An uploaded image the service cannot crop a face from.
pub const FACE_UNUSABLE: i64 = 1490108;
/// Field validation failed: a bad `user_id_type`, `page_size` and the like.
pub const INVALID_PARAM: i64 = 99992402;
pub const NO_SUCH_PATH: i64 = 99991201;

pub const TOKEN_MISSING: i64 = 99991661;
pub const TOKEN_INVALID: i64 = 99991663;
pub const TOKEN_ILLEGAL: i64 = 99991665;
pub const TOKEN_FORMAT: i64 = 99991671;

pub const SCOPE_MISSING: i64 = 99991672;
pub const NO_PERMISSION: i64 = 99991676;
pub const IP_DENIED: i64 = 99991401;

pub const RATE_LIMITED: i64 = 99991400;
pub const QUOTA_EXHAUSTED: i64 = 99991403;

/// Token endpoint refusals of the app's own credentials.
pub const APP_PARAM_INVALID: i64 = 10003;
pub const APP_SECRET_INVALID: i64 = 10014;
pub const APP_MISMATCH: i64 = 20002;

const INTERNAL_ERRORS: [i64; 3] = [1500, 5000, 2200];

/// A token error: the cached token must be dropped and a new one fetched.
pub fn is_token_error(code: i64) -> bool {
    matches!(
        code,
        TOKEN_MISSING | TOKEN_INVALID | TOKEN_ILLEGAL | TOKEN_FORMAT
    )
}

/// The scopes an app needs to read faces with ids of this kind.
pub fn required_scopes(kind: IdKind) -> &'static str {
    match kind {
        IdKind::UserId => "acs:users and contact:user.employee_id:readonly",
        IdKind::OpenId | IdKind::UnionId => "acs:users",
    }
}

/// Classifies a non-success answer of an ACS endpoint.
///
/// Only the two "does not exist" codes become not-found; anything unknown is
/// a refusal or a transient failure, never a reason to delete a backup.
pub fn classify(failure: ApiFailure, retry_after: Option<Duration>) -> ApiError {
    let status = failure.status.unwrap_or(0);
    match failure.code {
        Some(USER_NOT_FOUND) => ApiError::UserNotFound,
        Some(FACE_NOT_FOUND) => ApiError::FaceNotFound,
        Some(INVALID_PAGE_TOKEN) => ApiError::InvalidPageToken,
        Some(FACE_UNUSABLE) => ApiError::ImageRefused(failure),
        Some(SCOPE_MISSING | NO_PERMISSION | IP_DENIED) => ApiError::PermissionDenied(failure),
        Some(APP_PARAM_INVALID | APP_SECRET_INVALID | APP_MISMATCH) => {
            ApiError::BadCredentials(failure)
        }
        Some(RATE_LIMITED) => ApiError::Throttled {
            retry_after,
            failure,
        },
        // The client renews a refused token once itself; a refusal that
        // survives that is worth another try with yet another token.
        Some(code) if is_token_error(code) => ApiError::Transient(failure),
        _ if status == 429 => ApiError::Throttled {
            retry_after,
            failure,
        },
        Some(code) if INTERNAL_ERRORS.contains(&code) => ApiError::Transient(failure),
        _ if status >= 500 || status == 408 => ApiError::Transient(failure),
        // A 4xx without a readable code says nothing definite: retry, then EIO.
        None => ApiError::Transient(failure),
        Some(_) => ApiError::Failed(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: Option<i64>) -> ApiError {
        let failure = ApiFailure {
            status: Some(status),
            code,
            ..ApiFailure::default()
        };
        classify(failure, None)
    }

    #[test]
    fn only_the_two_not_found_codes_mean_absent() {
        assert_eq!(answer(400, Some(USER_NOT_FOUND)), ApiError::UserNotFound);
        assert_eq!(answer(400, Some(FACE_NOT_FOUND)), ApiError::FaceNotFound);
        for (status, code) in [
            (404, None),
            (404, Some(NO_SUCH_PATH)),
            (400, None),
            (500, None),
            (400, Some(1)),
        ] {
            let err = answer(status, code);
            assert!(
                !matches!(err, ApiError::UserNotFound | ApiError::FaceNotFound),
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn transient_and_throttled_are_retryable() {
        assert!(answer(500, Some(5000)).is_retryable());
        assert!(answer(200, Some(2200)).is_retryable());
        assert!(answer(503, None).is_retryable());
        assert!(
            answer(400, None).is_retryable(),
            "empty 400 is not definite"
        );
        assert!(answer(429, Some(RATE_LIMITED)).is_retryable());
        assert!(answer(400, Some(RATE_LIMITED)).is_retryable());
        assert!(!answer(400, Some(SCOPE_MISSING)).is_retryable());
        assert!(!answer(400, Some(QUOTA_EXHAUSTED)).is_retryable());
        assert!(answer(400, Some(TOKEN_INVALID)).is_retryable());
    }

    #[test]
    fn permission_codes() {
        for code in [SCOPE_MISSING, NO_PERMISSION, IP_DENIED] {
            assert!(matches!(
                answer(400, Some(code)),
                ApiError::PermissionDenied(_)
            ));
        }
        for code in [APP_SECRET_INVALID, APP_MISMATCH, APP_PARAM_INVALID] {
            assert!(matches!(
                answer(400, Some(code)),
                ApiError::BadCredentials(_)
            ));
        }
        assert!(is_token_error(TOKEN_INVALID) && !is_token_error(SCOPE_MISSING));
    }
}
