//! The ACS endpoints as the real service answers them: the tenant token,
//! the user list, users, faces and uploads, and the long connection's
//! bootstrap; as strict about tokens and parameters as the service.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::http_server::{Request, Response};
use super::state::{error, invalid_param, ok, State};
use super::Route;
use super::{face_image, multipart};
use crate::api::codes;
use crate::api::image::{ImageType, MAX_UPLOAD_BYTES};
use crate::api::IdKind;

/// The service's limit on `page_size`.
const MAX_PAGE_SIZE: usize = 50;
const DEFAULT_PAGE_SIZE: usize = 20;
/// The real service hands out the same token while this much life remains.
const TOKEN_REUSE_MIN: Duration = Duration::from_secs(30 * 60);

/// A query boolean as the service reads it. The official Python SDK sends
/// `True`/`False`, and the service accepts them; the spellings of Go's
/// strconv.ParseBool are what we take it to accept (an inference: the
/// gateway is believed to be written in Go; only true/True/false/False are
/// known from the SDKs).
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn encode_page_token(offset: usize) -> String {
    // Opaque, and holding the characters that break a careless query string.
    format!("pt/{offset:x}+=")
}

fn decode_page_token(token: &str) -> Option<usize> {
    usize::from_str_radix(token.strip_prefix("pt/")?.strip_suffix("+=")?, 16).ok()
}

/// The long connection's bootstrap, as the SDKs call it: the app's id and
/// secret (not a token) in, a one-use connection URL and a ClientConfig out.
pub(super) fn events_endpoint(state: &State, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "AppID")]
        app_id: String,
        #[serde(rename = "AppSecret")]
        app_secret: String,
    }
    let Ok(body) = serde_json::from_slice::<Body>(&req.body) else {
        return Response::json(200, &json!({ "code": 1000040345, "msg": "invalid param" }));
    };
    if body.app_id != state.config.app_id || body.app_secret != state.config.app_secret {
        return Response::json(
            200,
            &json!({ "code": 1000040344, "msg": "app auth failed" }),
        );
    }
    let (code, config) = {
        let behaviour = state.behave();
        (behaviour.bootstrap_code, behaviour.client_config.clone())
    };
    if let Some(code) = code {
        return Response::json(
            200,
            &json!({ "code": code, "msg": "refused by the emulator" }),
        );
    }
    let config = config.unwrap_or_else(|| {
        json!({ "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 2 })
    });
    Response::json(
        200,
        &json!({ "code": 0, "msg": "ok", "data": {
            "URL": state.long_connection.issue_url(),
            "ClientConfig": config,
        }}),
    )
}

pub(super) fn token(state: &State, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    struct Body {
        app_id: String,
        app_secret: String,
    }
    let Ok(body) = serde_json::from_slice::<Body>(&req.body) else {
        return error(400, codes::APP_PARAM_INVALID, "invalid param");
    };
    if body.app_id != state.config.app_id {
        return error(
            400,
            codes::APP_PARAM_INVALID,
            "invalid param: app_id not found",
        );
    }
    if body.app_secret != state.config.app_secret {
        return error(400, codes::APP_SECRET_INVALID, "app secret invalid");
    }
    let now = Instant::now();
    let mut tokens = state.tokens.lock();
    let reusable = tokens
        .iter()
        .filter(|(_, exp)| **exp > now + TOKEN_REUSE_MIN)
        .max_by_key(|(_, exp)| **exp);
    let (token, expiry) = match reusable {
        Some((t, exp)) => (t.clone(), *exp),
        None => {
            let serial = state.serial.fetch_add(1, Ordering::Relaxed);
            let token = format!(
                "t-emu{serial:06}{:08x}",
                now.elapsed().subsec_nanos() ^ 0x5a5a_5a5a
            );
            let expiry = now + state.config.token_lifetime;
            tokens.insert(token.clone(), expiry);
            (token, expiry)
        }
    };
    let expire = expiry.saturating_duration_since(now).as_secs();
    Response::json(
        200,
        &json!({ "code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire }),
    )
}

pub(super) fn authorize(state: &State, req: &Request) -> Result<(), Response> {
    let Some(token) = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(error(400, codes::TOKEN_MISSING, "missing access token"));
    };
    if !token.starts_with("t-") {
        return Err(error(
            400,
            codes::TOKEN_FORMAT,
            "invalid access token format",
        ));
    }
    match state.tokens.lock().get(token) {
        Some(expiry) if Instant::now() < *expiry => Ok(()),
        _ => Err(error(
            400,
            codes::TOKEN_INVALID,
            "Invalid access token for authorization. Please make a request with token attached.",
        )),
    }
}

pub(super) fn acs(
    state: &State,
    route: Route,
    user_id: Option<&str>,
    query: &[(String, String)],
    req: &Request,
) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let kind = match param("user_id_type") {
        None => IdKind::OpenId,
        Some(value) => match IdKind::parse(value) {
            Some(kind) => kind,
            None => return invalid_param("user_id_type must be open_id, union_id or user_id"),
        },
    };
    if kind == IdKind::UserId && state.config.deny_user_id_scope {
        return error(
            400,
            codes::SCOPE_MISSING,
            "Access denied. One of the following scopes is required: [contact:user.employee_id:readonly].",
        );
    }
    match route {
        Route::ListUsers => list(state, kind, param("page_size"), param("page_token")),
        Route::Upload => match user_id.and_then(|id| state.tenant.find(kind, id)) {
            None => error(400, codes::USER_NOT_FOUND, "user not found"),
            Some(i) => upload(state, i, req),
        },
        Route::GetUser | Route::Face => {
            let Some(i) = user_id.and_then(|id| state.tenant.find(kind, id)) else {
                return error(400, codes::USER_NOT_FOUND, "user not found");
            };
            if route == Route::GetUser {
                let user = &state.tenant.users()[i];
                let feature =
                    json!({ "card": user.card, "face_uploaded": state.tenant.has_face(i) });
                return ok(json!({ "user": { "user_id": user.id(kind), "feature": feature } }));
            }
            let cropped = match param("is_cropped").map(parse_bool) {
                None => false,
                Some(Some(cropped)) => cropped,
                Some(None) => return invalid_param("is_cropped must be true or false"),
            };
            match state.tenant.face(i, cropped) {
                Some(face) => Response::new(200, "image/jpeg", face.to_vec()),
                None => error(400, codes::FACE_NOT_FOUND, "user face not found"),
            }
        }
        _ => unreachable!("only ACS endpoints reach here"),
    }
}

/// A face upload, as strict as the documentation: multipart/form-data
/// with exactly the parts `files` (the image), `file_type` (`jpg` or `png`,
/// matching the bytes) and `file_name` (with a suffix). The face it
/// replaces is served from now on, with a crop made from it, and the
/// event goes out.
pub(super) fn upload(state: &State, i: usize, req: &Request) -> Response {
    let form = multipart::boundary(req.header("content-type").unwrap_or(""))
        .and_then(|b| multipart::parse(&req.body, &b));
    let parts = match form {
        Ok(parts) => parts,
        Err(why) => return invalid_param(&why),
    };
    let mut files = None;
    let (mut file_type, mut file_name) = (None, None);
    for part in parts {
        let slot = match part.name.as_str() {
            // The official Python SDK sends it without a filename.
            "files" => &mut files,
            "file_type" => &mut file_type,
            "file_name" => &mut file_name,
            other => return invalid_param(&format!("unexpected part {other:?}")),
        };
        if slot.replace(part.body).is_some() {
            return invalid_param("a part is given twice");
        }
    }
    let (Some(image), Some(file_type), Some(file_name)) = (files, file_type, file_name) else {
        return invalid_param("files, file_type and file_name are required");
    };
    let declared = match file_type.as_slice() {
        b"jpg" => ImageType::Jpeg,
        b"png" => ImageType::Png,
        _ => return invalid_param("file_type must be jpg or png"),
    };
    let named = std::str::from_utf8(&file_name)
        .ok()
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty());
    if !named {
        return invalid_param("file_name must be a name with its suffix");
    }
    if image.len() as u64 > MAX_UPLOAD_BYTES {
        return invalid_param("the file is too large");
    }
    if let Some(code) = state.behave().upload_refusal {
        return error(400, code, "upload refused by the emulator");
    }
    match ImageType::of_whole(&image) {
        None => return error(400, codes::FACE_UNUSABLE, "face image is not usable"),
        Some(found) if found != declared => {
            return invalid_param("file_type does not match the file")
        }
        Some(_) => {}
    }
    let crop = face_image::crop_of(&image);
    state.tenant.replace_face(i, false, image);
    state.tenant.replace_face(i, true, crop);
    state.tenant.set_has_face(i, true);
    let open_id = state.tenant.users()[i].id(IdKind::OpenId).to_owned();
    state.push_user_updated(&open_id, true, 1);
    ok(json!({}))
}

pub(super) fn list(
    state: &State,
    kind: IdKind,
    page_size: Option<&str>,
    page_token: Option<&str>,
) -> Response {
    let size = match page_size.map(str::parse::<usize>) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        Some(_) => return invalid_param("page_size must be between 1 and 50"),
    };
    if state.behave().endless_listing {
        let users = state.tenant.users();
        let end = size.min(users.len());
        let items: Vec<_> = users[..end]
            .iter()
            .enumerate()
            .map(|(i, u)| json!({ "user_id": u.id(kind), "feature": { "card": u.card, "face_uploaded": state.tenant.has_face(i) } }))
            .collect();
        let next = format!("endless/{}", state.serial.fetch_add(1, Ordering::Relaxed));
        return ok(json!({ "items": items, "has_more": true, "page_token": next }));
    }
    let start = match page_token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => {
            match decode_page_token(token).filter(|n| *n <= state.tenant.users().len()) {
                Some(n) => n,
                None => return error(400, codes::INVALID_PAGE_TOKEN, "invalid page token"),
            }
        }
    };
    let users = state.tenant.users();
    let end = (start + size).min(users.len());
    let items: Vec<_> = users[start..end]
        .iter()
        .enumerate()
        .map(|(n, u)| json!({ "user_id": u.id(kind), "feature": { "card": u.card, "face_uploaded": state.tenant.has_face(start + n) } }))
        .collect();
    let mut data = json!({ "items": items, "has_more": end < users.len() });
    if end < users.len() {
        data["page_token"] = json!(encode_page_token(end));
    }
    ok(data)
}
