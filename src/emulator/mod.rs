//! A Feishu ACS emulator on loopback: the token, user list, user and face
//! endpoints, as strict as the real service about tokens and parameters.
//! Tests, benchmarks and `facefs --demo` run against it.

pub mod face_image;
pub mod http;
pub mod tenant;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use self::http::{decode, Request, Response, Server};
use self::tenant::{Tenant, TenantSpec};
use crate::api::codes;
use crate::layout::IdKind;

/// The service's limit on `page_size`.
const MAX_PAGE_SIZE: usize = 50;
const DEFAULT_PAGE_SIZE: usize = 20;
/// The real service hands out the same token while this much life remains.
const TOKEN_REUSE_MIN: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Where to listen; only loopback makes sense.
    pub listen: String,
    pub tenant: TenantSpec,
    pub app_id: String,
    pub app_secret: String,
    pub token_lifetime: Duration,
    /// Refuse `user_id_type=user_id` as an app without
    /// `contact:user.employee_id:readonly` is refused.
    pub deny_user_id_scope: bool,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            listen: "127.0.0.1:0".into(),
            tenant: TenantSpec::default(),
            app_id: "cli_emulator".into(),
            app_secret: "emulator-secret".into(),
            token_lifetime: Duration::from_secs(7200),
            deny_user_id_scope: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    ListUsers,
    GetUser,
    Face,
    Control,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    pub endpoint: Endpoint,
    /// Path and query exactly as sent.
    pub path: String,
    pub query: String,
    /// The decoded `{user_id}` of user and face requests.
    pub user_id: Option<String>,
}

struct State {
    config: EmulatorConfig,
    tenant: Tenant,
    tokens: Mutex<HashMap<String, Instant>>,
    log: Mutex<Vec<LoggedRequest>>,
    serial: AtomicU64,
}

pub struct Emulator {
    state: Arc<State>,
    server: Server,
}

impl Emulator {
    pub fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let state = Arc::new(State {
            tenant: Tenant::generate(config.tenant.clone()),
            config,
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let server = Server::start(&state.config.listen, Arc::new(move |req: &Request| handler_state.handle(req)))?;
        Ok(Emulator { state, server })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.state.config
    }

    pub fn tenant(&self) -> &Tenant {
        &self.state.tenant
    }

    /// Makes every issued token expired, as if hours had passed.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens();
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock_log().clone()
    }

    pub fn count(&self, endpoint: Endpoint) -> usize {
        self.state.lock_log().iter().filter(|r| r.endpoint == endpoint).count()
    }

    /// The ids of `kind` that the list endpoint reports with a face.
    pub fn ids_with_faces(&self, kind: IdKind) -> Vec<String> {
        self.tenant().users().iter().filter(|u| u.has_face).map(|u| u.id(kind).to_owned()).collect()
    }

    /// The bytes the face endpoint serves for this id.
    pub fn face(&self, kind: IdKind, id: &str, cropped: bool) -> Option<Vec<u8>> {
        let i = self.tenant().find(kind, id)?;
        self.tenant().face(i, cropped).map(|f| f.to_vec())
    }
}

fn error(status: u16, code: i64, msg: &str) -> Response {
    Response::json(status, &json!({ "code": code, "msg": msg, "error": { "log_id": "" } }))
}

fn ok(data: serde_json::Value) -> Response {
    Response::json(200, &json!({ "code": 0, "msg": "success", "data": data }))
}

fn invalid_param(msg: &str) -> Response {
    error(400, codes::INVALID_PARAM, &format!("field validation failed: {msg}"))
}

fn encode_page_token(offset: usize) -> String {
    // Opaque, and holding the characters that break a careless query string.
    format!("pt/{offset:x}+=")
}

fn decode_page_token(token: &str) -> Option<usize> {
    usize::from_str_radix(token.strip_prefix("pt/")?.strip_suffix("+=")?, 16).ok()
}

impl State {
    fn lock_log(&self) -> std::sync::MutexGuard<'_, Vec<LoggedRequest>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.tokens.lock().unwrap_or_else(|e| e.into_inner()).values_mut() {
            *expiry = now;
        }
    }

    fn handle(&self, req: &Request) -> Response {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let segments: Vec<&str> = req.path.split('/').collect();
        let (endpoint, raw_id) = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["", "open-apis", "auth", "v3", "tenant_access_token", "internal"]) => (Endpoint::Token, None),
            ("GET", ["", "open-apis", "acs", "v1", "users"]) => (Endpoint::ListUsers, None),
            ("GET", ["", "open-apis", "acs", "v1", "users", id]) => (Endpoint::GetUser, Some(*id)),
            ("GET", ["", "open-apis", "acs", "v1", "users", id, "face"]) => (Endpoint::Face, Some(*id)),
            (_, ["", "_emulator", ..]) => (Endpoint::Control, None),
            _ => (Endpoint::Unknown, None),
        };
        let user_id = raw_id.and_then(decode);
        self.lock_log().push(LoggedRequest {
            method: req.method.clone(),
            endpoint,
            path: req.path.clone(),
            query: req.query.clone(),
            user_id: user_id.clone(),
        });
        let response = match endpoint {
            Endpoint::Token => self.token(req),
            Endpoint::Control => self.control(req),
            Endpoint::Unknown => error(404, codes::NO_SUCH_PATH, "404 page not found"),
            _ => match (self.authorize(req), req.query_pairs()) {
                (Err(refusal), _) => refusal,
                (Ok(()), None) => invalid_param("query is not UTF-8"),
                (Ok(()), Some(query)) => self.acs(endpoint, user_id.as_deref(), &query),
            },
        };
        response.with_header("X-Tt-Logid", &format!("2026emulator{serial:08}"))
    }

    fn token(&self, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        struct Body {
            app_id: String,
            app_secret: String,
        }
        let Ok(body) = serde_json::from_slice::<Body>(&req.body) else {
            return error(400, codes::APP_PARAM_INVALID, "invalid param");
        };
        if body.app_id != self.config.app_id {
            return error(400, codes::APP_PARAM_INVALID, "invalid param: app_id not found");
        }
        if body.app_secret != self.config.app_secret {
            return error(400, codes::APP_SECRET_INVALID, "app secret invalid");
        }
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = tokens.iter().filter(|(_, exp)| **exp > now + TOKEN_REUSE_MIN).max_by_key(|(_, exp)| **exp);
        let (token, expiry) = match reusable {
            Some((t, exp)) => (t.clone(), *exp),
            None => {
                let serial = self.serial.fetch_add(1, Ordering::Relaxed);
                let token = format!("t-emu{serial:06}{:08x}", now.elapsed().subsec_nanos() ^ 0x5a5a_5a5a);
                let expiry = now + self.config.token_lifetime;
                tokens.insert(token.clone(), expiry);
                (token, expiry)
            }
        };
        let expire = expiry.saturating_duration_since(now).as_secs();
        Response::json(200, &json!({ "code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire }))
    }

    fn authorize(&self, req: &Request) -> Result<(), Response> {
        let Some(token) = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(error(400, codes::TOKEN_MISSING, "missing access token"));
        };
        if !token.starts_with("t-") {
            return Err(error(400, codes::TOKEN_FORMAT, "invalid access token format"));
        }
        match self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token) {
            Some(expiry) if Instant::now() < *expiry => Ok(()),
            _ => Err(error(400, codes::TOKEN_INVALID, "Invalid access token for authorization. Please make a request with token attached.")),
        }
    }

    fn acs(&self, endpoint: Endpoint, user_id: Option<&str>, query: &[(String, String)]) -> Response {
        let param = |name: &str| query.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let kind = match param("user_id_type") {
            None => IdKind::OpenId,
            Some(value) => match IdKind::parse(value) {
                Some(kind) => kind,
                None => return invalid_param("user_id_type must be open_id, union_id or user_id"),
            },
        };
        if kind == IdKind::UserId && self.config.deny_user_id_scope {
            return error(
                400,
                codes::SCOPE_MISSING,
                "Access denied. One of the following scopes is required: [contact:user.employee_id:readonly].",
            );
        }
        match endpoint {
            Endpoint::ListUsers => self.list(kind, param("page_size"), param("page_token")),
            Endpoint::GetUser | Endpoint::Face => {
                let Some(i) = user_id.and_then(|id| self.tenant.find(kind, id)) else {
                    return error(400, codes::USER_NOT_FOUND, "user not found");
                };
                if endpoint == Endpoint::GetUser {
                    let user = &self.tenant.users()[i];
                    let feature = json!({ "card": user.card, "face_uploaded": user.has_face });
                    return ok(json!({ "user": { "user_id": user.id(kind), "feature": feature } }));
                }
                let cropped = match param("is_cropped") {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(_) => return invalid_param("is_cropped must be true or false"),
                };
                match self.tenant.face(i, cropped) {
                    Some(face) => Response::new(200, "image/jpeg", face.to_vec()),
                    None => error(400, codes::FACE_NOT_FOUND, "user face not found"),
                }
            }
            _ => unreachable!("only ACS endpoints reach here"),
        }
    }

    fn list(&self, kind: IdKind, page_size: Option<&str>, page_token: Option<&str>) -> Response {
        let size = match page_size.map(str::parse::<usize>) {
            None => DEFAULT_PAGE_SIZE,
            Some(Ok(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            Some(_) => return invalid_param("page_size must be between 1 and 50"),
        };
        let start = match page_token.filter(|t| !t.is_empty()) {
            None => 0,
            Some(token) => match decode_page_token(token).filter(|n| *n <= self.tenant.users().len()) {
                Some(n) => n,
                None => return error(400, codes::INVALID_PAGE_TOKEN, "invalid page token"),
            },
        };
        let users = self.tenant.users();
        let end = (start + size).min(users.len());
        let items: Vec<_> = users[start..end]
            .iter()
            .map(|u| json!({ "user_id": u.id(kind), "feature": { "card": u.card, "face_uploaded": u.has_face } }))
            .collect();
        let mut data = json!({ "items": items, "has_more": end < users.len() });
        if end < users.len() {
            data["page_token"] = json!(encode_page_token(end));
        }
        ok(data)
    }

    /// Test hooks for the standalone emulator, for scripts that cannot call
    /// the methods of [`Emulator`].
    fn control(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/_emulator/expire-tokens") => {
                self.expire_tokens();
                Response::json(200, &json!({ "ok": true }))
            }
            ("GET", "/_emulator/stats") => {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for r in self.lock_log().iter() {
                    *counts.entry(format!("{:?}", r.endpoint)).or_default() += 1;
                }
                Response::json(200, &json!(counts))
            }
            _ => error(404, codes::NO_SUCH_PATH, "no such control endpoint"),
        }
    }
}
