//! Test hooks for the standalone emulator (`/_emulator/...`), for scripts
//! that cannot call the methods of [`super::Emulator`].

use std::collections::HashMap;

use serde_json::json;

use super::http_server::{Request, Response};
use super::state::{error, State};
use super::{Route, WireFault};
use crate::api::codes;
use crate::api::IdKind;

/// Test hooks for the standalone emulator, for scripts that cannot call
/// the methods of [`Emulator`].
pub(super) fn control(state: &State, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        // `?open_id=A&from=B`: A's face becomes B's, and the event goes out.
        ("POST", "/_emulator/replace-face") => {
            let (Some(target), Some(from)) = (req.param("open_id"), req.param("from")) else {
                return error(400, codes::INVALID_PARAM, "give open_id and from");
            };
            let (Some(i), Some(j)) = (
                state.tenant.find(IdKind::OpenId, &target),
                state.tenant.find(IdKind::OpenId, &from),
            ) else {
                return error(404, codes::USER_NOT_FOUND, "no such user");
            };
            let Some(bytes) = state.tenant.face(j, false) else {
                return error(404, codes::FACE_NOT_FOUND, "no face to copy");
            };
            state.tenant.replace_face(i, false, bytes.to_vec());
            Response::json(
                200,
                &json!({ "message_id": state.push_user_updated(&target, true, 1) }),
            )
        }
        // A device reset: every user's face is gone (no events).
        ("POST", "/_emulator/remove-faces") => {
            for i in 0..state.tenant.users().len() {
                state.tenant.set_has_face(i, false);
            }
            Response::json(200, &json!({ "ok": true }))
        }
        ("POST", "/_emulator/expire-tokens") => {
            state.expire_tokens();
            Response::json(200, &json!({ "ok": true }))
        }
        // `?fault=Reset&rate=0.3` fails that share of face requests;
        // no query clears every fault.
        ("POST", "/_emulator/faults") => {
            let Some(fault) = req.param("fault") else {
                state.behave().faults.clear();
                return Response::json(200, &json!({ "ok": true }));
            };
            let Some(fault) = WireFault::ALL
                .into_iter()
                .find(|f| format!("{f:?}") == fault)
            else {
                return error(400, codes::INVALID_PARAM, "unknown fault");
            };
            let rate = req
                .param("rate")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1.0);
            state.behave().faults.push((Route::Face, fault, rate));
            Response::json(200, &json!({ "ok": true }))
        }
        ("GET", "/_emulator/stats") => {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for r in state.lock_log().iter() {
                *counts.entry(format!("{:?}", r.route)).or_default() += 1;
                if r.throttled {
                    *counts.entry("Throttled".into()).or_default() += 1;
                }
                if r.fault.is_some() {
                    *counts.entry("Faulted".into()).or_default() += 1;
                }
            }
            Response::json(200, &json!(counts))
        }
        // The API requests of each second (wall clock, Unix seconds) that
        // had any: `[[second, answered, throttled], ...]`, for scripts that
        // look for when throttling happened, not only how often.
        ("GET", "/_emulator/timeline") => {
            let mut seconds: std::collections::BTreeMap<u64, (usize, usize)> = Default::default();
            for r in state
                .lock_log()
                .iter()
                .filter(|r| r.route.counts_against_limit())
            {
                let second =
                    r.at.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                let entry = seconds.entry(second).or_default();
                match r.throttled {
                    true => entry.1 += 1,
                    false => entry.0 += 1,
                }
            }
            let rows: Vec<_> = seconds
                .into_iter()
                .map(|(s, (a, t))| json!([s, a, t]))
                .collect();
            Response::json(200, &json!(rows))
        }
        _ => error(404, codes::NO_SUCH_PATH, "no such control route"),
    }
}
