//! A Feishu ACS emulator on loopback: the token, user list, user and face
//! endpoints, as strict as the real service about tokens and parameters.
//! Tests, benchmarks and `facefs --demo` run against it.

pub mod face_image;
pub mod http_server;
pub mod long_connection;
pub mod multipart;
pub mod tenant;

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use self::http_server::{decode, Reply, Request, Response, Server};
use self::tenant::{Tenant, TenantSpec};
use crate::api::codes;
use crate::api::image::{ImageType, MAX_UPLOAD_BYTES};
use crate::api::IdKind;

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
    /// ACS requests admitted per second; `None` for no limit.
    pub rate_limit: Option<u32>,
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
            rate_limit: None,
        }
    }
}

/// What a request asked for, by method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Token,
    ListUsers,
    GetUser,
    Face,
    /// `PUT /open-apis/acs/v1/users/:user_id/face`
    Upload,
    Control,
    /// `POST /callback/ws/endpoint`: the event long connection's bootstrap.
    EventsEndpoint,
    Unknown,
}

/// A way for the emulator to fail a request on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFault {
    /// HTTP 500 with a JSON error (code 5000).
    ServerError,
    /// A TCP reset before any answer.
    Reset,
    /// A body cut short of its Content-Length, then a reset.
    CutShort,
    /// A correct answer, sent chunked without Content-Length.
    Chunked,
    /// HTTP 400 with an empty body.
    EmptyBadRequest,
    /// HTTP 429, code 99991400, with `x-ogw-ratelimit-reset`.
    Throttle,
    /// No answer at all, for longer than any client waits.
    Hang,
    /// Every token expires, and this request is refused with 99991663.
    ExpiredToken,
    /// A correct answer whose body comes one byte per 100 ms.
    Trickle,
}

impl WireFault {
    pub const ALL: [WireFault; 9] = [
        WireFault::ServerError,
        WireFault::Reset,
        WireFault::CutShort,
        WireFault::Chunked,
        WireFault::EmptyBadRequest,
        WireFault::Throttle,
        WireFault::Hang,
        WireFault::ExpiredToken,
        WireFault::Trickle,
    ];
}

/// How long a hung answer holds its connection.
const HANG: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    pub route: Route,
    /// Path and query exactly as sent.
    pub path: String,
    pub query: String,
    /// The decoded `{user_id}` of user and face requests.
    pub user_id: Option<String>,
    /// The fault given instead of an answer, if any.
    pub fault: Option<WireFault>,
    /// Refused by the emulated rate limit.
    pub throttled: bool,
}

/// How one request misbehaves.
#[derive(Default)]
struct Misbehaviour {
    /// The fault to give instead of the answer.
    fault: Option<WireFault>,
    /// Refused by the emulated rate limit: the seconds until its window resets.
    throttled: Option<f64>,
    /// The whole API is down.
    outage: bool,
    /// How long to wait before answering.
    latency: Duration,
}

/// What tests and benchmarks change while the emulator runs.
#[derive(Default)]
struct Behaviour {
    faults: Vec<(Route, WireFault, f64)>,
    outage: bool,
    latency: Duration,
    rate_limit: Option<RateWindow>,
    endless_listing: bool,
    /// The `code` the bootstrap answers instead of 0.
    bootstrap_code: Option<i64>,
    /// The ClientConfig the bootstrap hands out (None: short test intervals).
    client_config: Option<serde_json::Value>,
    /// The `code` uploads are refused with (HTTP 400), if any.
    upload_refusal: Option<i64>,
}

/// Fixed one-second windows, as the gateway's `x-ogw-ratelimit-reset` suggests.
struct RateWindow {
    per_second: u32,
    window_start: Instant,
    used: u32,
}

impl RateWindow {
    /// `None` if admitted, else the seconds until the window resets.
    fn admit(&mut self, now: Instant) -> Option<f64> {
        while now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start += Duration::from_secs(1);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            return None;
        }
        Some(
            (self.window_start + Duration::from_secs(1))
                .saturating_duration_since(now)
                .as_secs_f64(),
        )
    }
}

struct State {
    config: EmulatorConfig,
    tenant: Tenant,
    tokens: Mutex<HashMap<String, Instant>>,
    log: Mutex<Vec<LoggedRequest>>,
    /// Signalled whenever a request is logged, for tests that wait for one.
    logged: Condvar,
    serial: AtomicU64,
    behaviour: Mutex<Behaviour>,
    rng: Mutex<u64>,
    long_connection: long_connection::LongConnection,
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
            logged: Condvar::new(),
            serial: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::default()),
            rng: Mutex::new(0x2545_f491_4f6c_dd1d),
            long_connection: long_connection::LongConnection::start()?,
        });
        let handler_state = state.clone();
        let server = Server::start(
            &state.config.listen,
            Arc::new(move |req: &Request| handler_state.handle(req)),
        )?;
        if let Some(limit) = state.config.rate_limit {
            state.behave().rate_limit = Some(RateWindow {
                per_second: limit,
                window_start: Instant::now(),
                used: 0,
            });
        }
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

    /// From now on, fail this share (0.0 to 1.0) of `route`'s requests with `fault`.
    pub fn inject(&self, route: Route, fault: WireFault, rate: f64) {
        self.state.behave().faults.push((route, fault, rate));
    }

    pub fn clear_faults(&self) {
        self.state.behave().faults.clear();
    }

    /// Every request, the token endpoint's too, answers HTTP 503 while on.
    pub fn set_outage(&self, on: bool) {
        self.state.behave().outage = on;
    }

    /// While on, every user-list page says there is more, with a new page
    /// token, and names only users already named: a list that never ends.
    pub fn set_endless_listing(&self, on: bool) {
        self.state.behave().endless_listing = on;
    }

    /// Delay every ACS answer by this long.
    pub fn set_latency(&self, latency: Duration) {
        self.state.behave().latency = latency;
    }

    /// Admit at most this many ACS requests per one-second window; refuse the
    /// rest with HTTP 429 and code 99991400.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.state.behave().rate_limit = per_second.map(|per_second| RateWindow {
            per_second,
            window_start: Instant::now(),
            used: 0,
        });
    }

    /// Every token handed out so far, for tests that look for leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.tokens.lock().keys().cloned().collect()
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock_log().clone()
    }

    /// Waits until the request log satisfies `done`, at most `limit`;
    /// returns whether it did. Tests wait on this rather than sleeping.
    pub fn wait_for_log(&self, limit: Duration, done: impl Fn(&[LoggedRequest]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut log = self.state.lock_log();
        while !done(&log) {
            if self.state.logged.wait_until(&mut log, deadline).timed_out() {
                return done(&log);
            }
        }
        true
    }

    /// Waits until `n` requests of `route` have been given a fault: a hung
    /// request is then hanging, a throttled one has its refusal.
    pub fn wait_for_faulted(&self, route: Route, n: usize) {
        let arrived = self.wait_for_log(Duration::from_secs(30), |log| {
            log.iter()
                .filter(|r| r.route == route && r.fault.is_some())
                .count()
                >= n
        });
        assert!(
            arrived,
            "{n} faulted {route:?} requests did not arrive within 30 s"
        );
    }

    pub fn count(&self, route: Route) -> usize {
        self.state
            .lock_log()
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// The ids of `kind` that the list endpoint reports with a face.
    pub fn ids_with_faces(&self, kind: IdKind) -> Vec<String> {
        self.ids_where(kind, true)
    }

    /// The ids of `kind` of users without a face.
    pub fn ids_without_faces(&self, kind: IdKind) -> Vec<String> {
        self.ids_where(kind, false)
    }

    fn ids_where(&self, kind: IdKind, has_face: bool) -> Vec<String> {
        let users = self.tenant().users().iter().enumerate();
        users
            .filter(|(i, _)| self.tenant().has_face(*i) == has_face)
            .map(|(_, u)| u.id(kind).to_owned())
            .collect()
    }

    /// Enrols (`true`) or removes the face of the user with this open_id;
    /// with an event client connected, the event follows.
    pub fn set_has_face(&self, open_id: &str, has_face: bool) -> Option<String> {
        let i = self
            .tenant()
            .find(IdKind::OpenId, open_id)
            .expect("no such user");
        self.tenant().set_has_face(i, has_face);
        self.push_user_updated(open_id, has_face, 1)
    }

    /// From now on the face endpoint serves `bytes` for this id (a user with
    /// a face), as after a re-enrolment.
    /// With an event client connected, `acs.user.updated_v1` follows, as the
    /// service sends it (the id of the message it went in is returned).
    pub fn replace_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        bytes: Vec<u8>,
    ) -> Option<String> {
        let i = self.tenant().find(kind, id).expect("no such user");
        self.tenant().replace_face(i, cropped, bytes);
        let open_id = self.tenant().users()[i].id(IdKind::OpenId).to_owned();
        self.push_user_updated(&open_id, true, 1)
    }

    /// The event long connection's server side: acks, pings, connections,
    /// and the knobs that make it misbehave.
    pub fn long_connection(&self) -> &long_connection::Shared {
        &self.state.long_connection.shared
    }

    /// The next bootstraps answer this `code` (None: 0, a URL).
    pub fn set_bootstrap_code(&self, code: Option<i64>) {
        self.state.behave().bootstrap_code = code;
    }

    /// Refuses the next uploads with this code (None: accept them).
    pub fn set_upload_refusal(&self, code: Option<i64>) {
        self.state.behave().upload_refusal = code;
    }

    /// The ClientConfig the next bootstraps hand out.
    pub fn set_client_config(&self, config: serde_json::Value) {
        self.state.behave().client_config = Some(config);
    }

    /// Sends an `acs.user.updated_v1` event for the user with this open_id
    /// to one connected client, in `fragments` frames; the message id, or
    /// `None` if no client is connected.
    pub fn push_user_updated(
        &self,
        open_id: &str,
        face_uploaded: bool,
        fragments: usize,
    ) -> Option<String> {
        self.state
            .push_user_updated(open_id, face_uploaded, fragments)
    }

    /// Sends any event payload to one connected client.
    pub fn push_event(&self, payload: &[u8], fragments: usize) -> Option<String> {
        self.state.push_event(payload, fragments)
    }

    /// The bytes the face endpoint serves for this id.
    pub fn face(&self, kind: IdKind, id: &str, cropped: bool) -> Option<Vec<u8>> {
        let i = self.tenant().find(kind, id)?;
        self.tenant().face(i, cropped).map(|f| f.to_vec())
    }
}

fn error(status: u16, code: i64, msg: &str) -> Response {
    Response::json(
        status,
        &json!({ "code": code, "msg": msg, "error": { "log_id": "" } }),
    )
}

fn ok(data: serde_json::Value) -> Response {
    Response::json(200, &json!({ "code": 0, "msg": "success", "data": data }))
}

fn invalid_param(msg: &str) -> Response {
    error(
        400,
        codes::INVALID_PARAM,
        &format!("field validation failed: {msg}"),
    )
}

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

impl State {
    fn behave(&self) -> parking_lot::MutexGuard<'_, Behaviour> {
        self.behaviour.lock()
    }

    fn random(&self) -> f64 {
        let mut x = self.rng.lock();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How this request is to misbehave, as the tests set it up.
    fn misbehave(&self, route: Route) -> Misbehaviour {
        let acs = matches!(
            route,
            Route::ListUsers | Route::GetUser | Route::Face | Route::Upload
        );
        let mut behaviour = self.behave();
        let fault = behaviour
            .faults
            .iter()
            .filter(|(e, _, _)| *e == route)
            .find(|(_, _, rate)| self.random() < *rate)
            .map(|(_, f, _)| *f);
        let throttled = match (&mut behaviour.rate_limit, acs && fault.is_none()) {
            (Some(window), true) => window.admit(Instant::now()),
            _ => None,
        };
        Misbehaviour {
            fault,
            throttled,
            outage: behaviour.outage,
            latency: if acs {
                behaviour.latency
            } else {
                Duration::ZERO
            },
        }
    }

    fn push_user_updated(
        &self,
        open_id: &str,
        face_uploaded: bool,
        fragments: usize,
    ) -> Option<String> {
        let i = self.tenant.find(IdKind::OpenId, open_id)?;
        let user = &self.tenant.users()[i];
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let event = json!({
            "schema": "2.0",
            "header": {
                "event_id": format!("ev{n:012}"),
                "event_type": "acs.user.updated_v1",
                "create_time": format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()),
                "token": "",
                "app_id": self.config.app_id,
                "tenant_key": "emulator",
            },
            "event": {
                "user_id": {
                    "open_id": user.id(IdKind::OpenId),
                    "union_id": user.id(IdKind::UnionId),
                    "user_id": user.id(IdKind::UserId),
                },
                "card": user.card,
                "face_uploaded": face_uploaded,
            },
        });
        self.push_event(&serde_json::to_vec(&event).unwrap(), fragments)
    }

    fn push_event(&self, payload: &[u8], fragments: usize) -> Option<String> {
        let pick = self.random();
        self.long_connection
            .shared
            .push(payload, fragments, fragments > 1, pick)
    }

    fn lock_log(&self) -> parking_lot::MutexGuard<'_, Vec<LoggedRequest>> {
        self.log.lock()
    }

    fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.tokens.lock().values_mut() {
            *expiry = now;
        }
    }

    fn handle(&self, req: &Request) -> Reply {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let segments: Vec<&str> = req.path.split('/').collect();
        let (route, raw_id) = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["", "open-apis", "auth", "v3", "tenant_access_token", "internal"]) => {
                (Route::Token, None)
            }
            ("GET", ["", "open-apis", "acs", "v1", "users"]) => (Route::ListUsers, None),
            ("GET", ["", "open-apis", "acs", "v1", "users", id]) => (Route::GetUser, Some(*id)),
            ("GET", ["", "open-apis", "acs", "v1", "users", id, "face"]) => {
                (Route::Face, Some(*id))
            }
            ("PUT", ["", "open-apis", "acs", "v1", "users", id, "face"]) => {
                (Route::Upload, Some(*id))
            }
            (_, ["", "_emulator", ..]) => (Route::Control, None),
            ("POST", ["", "callback", "ws", "endpoint"]) => (Route::EventsEndpoint, None),
            _ => (Route::Unknown, None),
        };
        let user_id = raw_id.and_then(decode);
        let Misbehaviour {
            fault,
            throttled,
            outage,
            latency,
        } = if route == Route::Control {
            Misbehaviour::default()
        } else {
            self.misbehave(route)
        };
        self.lock_log().push(LoggedRequest {
            method: req.method.clone(),
            route,
            path: req.path.clone(),
            query: req.query.clone(),
            user_id: user_id.clone(),
            fault,
            throttled: throttled.is_some(),
        });
        self.logged.notify_all();
        let logid = format!("2026emulator{serial:08}");
        if outage {
            return Reply::Respond(
                Response::new(503, "text/plain", Vec::new()).with_header("X-Tt-Logid", &logid),
            );
        }
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if let Some(reset) = throttled {
            let refusal = error(429, codes::RATE_LIMITED, "request trigger frequency limit")
                .with_header("x-ogw-ratelimit-limit", "")
                .with_header("x-ogw-ratelimit-reset", &format!("{reset:.3}"));
            return Reply::Respond(refusal.with_header("X-Tt-Logid", &logid));
        }
        let answer = |req: &Request| {
            self.answer(route, user_id.as_deref(), req)
                .with_header("X-Tt-Logid", &logid)
        };
        match fault {
            None => Reply::Respond(answer(req)),
            Some(WireFault::ServerError) => {
                Reply::Respond(error(500, 5000, "internal error").with_header("X-Tt-Logid", &logid))
            }
            Some(WireFault::Reset) => Reply::Reset,
            Some(WireFault::CutShort) => {
                let response = answer(req);
                let keep = response.body.len() / 2;
                Reply::CutShort(response, keep)
            }
            Some(WireFault::Chunked) => Reply::Chunked(answer(req)),
            Some(WireFault::EmptyBadRequest) => {
                Reply::Respond(Response::new(400, "text/plain", Vec::new()))
            }
            Some(WireFault::Throttle) => Reply::Respond(
                error(429, codes::RATE_LIMITED, "request trigger frequency limit")
                    .with_header("x-ogw-ratelimit-reset", "0.2"),
            ),
            Some(WireFault::Hang) => Reply::Silence(HANG),
            Some(WireFault::Trickle) => Reply::Trickle(answer(req), Duration::from_millis(100)),
            Some(WireFault::ExpiredToken) => {
                self.expire_tokens();
                Reply::Respond(error(
                    400,
                    codes::TOKEN_INVALID,
                    "Invalid access token for authorization.",
                ))
            }
        }
    }

    fn answer(&self, route: Route, user_id: Option<&str>, req: &Request) -> Response {
        match route {
            Route::Token => self.token(req),
            Route::Control => self.control(req),
            Route::EventsEndpoint => self.events_endpoint(req),
            Route::Unknown => error(404, codes::NO_SUCH_PATH, "404 page not found"),
            _ => match (self.authorize(req), req.query_pairs()) {
                (Err(refusal), _) => refusal,
                (Ok(()), None) => invalid_param("query is not UTF-8"),
                (Ok(()), Some(query)) => self.acs(route, user_id, &query, req),
            },
        }
    }

    /// The long connection's bootstrap, as the SDKs call it: the app's id and
    /// secret (not a token) in, a one-use connection URL and a ClientConfig out.
    fn events_endpoint(&self, req: &Request) -> Response {
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
        if body.app_id != self.config.app_id || body.app_secret != self.config.app_secret {
            return Response::json(
                200,
                &json!({ "code": 1000040344, "msg": "app auth failed" }),
            );
        }
        let (code, config) = {
            let behaviour = self.behave();
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
                "URL": self.long_connection.issue_url(),
                "ClientConfig": config,
            }}),
        )
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
            return error(
                400,
                codes::APP_PARAM_INVALID,
                "invalid param: app_id not found",
            );
        }
        if body.app_secret != self.config.app_secret {
            return error(400, codes::APP_SECRET_INVALID, "app secret invalid");
        }
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        let reusable = tokens
            .iter()
            .filter(|(_, exp)| **exp > now + TOKEN_REUSE_MIN)
            .max_by_key(|(_, exp)| **exp);
        let (token, expiry) = match reusable {
            Some((t, exp)) => (t.clone(), *exp),
            None => {
                let serial = self.serial.fetch_add(1, Ordering::Relaxed);
                let token = format!(
                    "t-emu{serial:06}{:08x}",
                    now.elapsed().subsec_nanos() ^ 0x5a5a_5a5a
                );
                let expiry = now + self.config.token_lifetime;
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

    fn authorize(&self, req: &Request) -> Result<(), Response> {
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
        match self.tokens.lock().get(token) {
            Some(expiry) if Instant::now() < *expiry => Ok(()),
            _ => Err(error(400, codes::TOKEN_INVALID, "Invalid access token for authorization. Please make a request with token attached.")),
        }
    }

    fn acs(
        &self,
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
        if kind == IdKind::UserId && self.config.deny_user_id_scope {
            return error(
                400,
                codes::SCOPE_MISSING,
                "Access denied. One of the following scopes is required: [contact:user.employee_id:readonly].",
            );
        }
        match route {
            Route::ListUsers => self.list(kind, param("page_size"), param("page_token")),
            Route::Upload => match user_id.and_then(|id| self.tenant.find(kind, id)) {
                None => error(400, codes::USER_NOT_FOUND, "user not found"),
                Some(i) => self.upload(i, req),
            },
            Route::GetUser | Route::Face => {
                let Some(i) = user_id.and_then(|id| self.tenant.find(kind, id)) else {
                    return error(400, codes::USER_NOT_FOUND, "user not found");
                };
                if route == Route::GetUser {
                    let user = &self.tenant.users()[i];
                    let feature =
                        json!({ "card": user.card, "face_uploaded": self.tenant.has_face(i) });
                    return ok(json!({ "user": { "user_id": user.id(kind), "feature": feature } }));
                }
                let cropped = match param("is_cropped").map(parse_bool) {
                    None => false,
                    Some(Some(cropped)) => cropped,
                    Some(None) => return invalid_param("is_cropped must be true or false"),
                };
                match self.tenant.face(i, cropped) {
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
    fn upload(&self, i: usize, req: &Request) -> Response {
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
        if let Some(code) = self.behave().upload_refusal {
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
        self.tenant.replace_face(i, false, image);
        self.tenant.replace_face(i, true, crop);
        self.tenant.set_has_face(i, true);
        let open_id = self.tenant.users()[i].id(IdKind::OpenId).to_owned();
        self.push_user_updated(&open_id, true, 1);
        ok(json!({}))
    }

    fn list(&self, kind: IdKind, page_size: Option<&str>, page_token: Option<&str>) -> Response {
        let size = match page_size.map(str::parse::<usize>) {
            None => DEFAULT_PAGE_SIZE,
            Some(Ok(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            Some(_) => return invalid_param("page_size must be between 1 and 50"),
        };
        if self.behave().endless_listing {
            let users = self.tenant.users();
            let end = size.min(users.len());
            let items: Vec<_> = users[..end]
                .iter()
                .enumerate()
                .map(|(i, u)| json!({ "user_id": u.id(kind), "feature": { "card": u.card, "face_uploaded": self.tenant.has_face(i) } }))
                .collect();
            let next = format!("endless/{}", self.serial.fetch_add(1, Ordering::Relaxed));
            return ok(json!({ "items": items, "has_more": true, "page_token": next }));
        }
        let start = match page_token.filter(|t| !t.is_empty()) {
            None => 0,
            Some(token) => {
                match decode_page_token(token).filter(|n| *n <= self.tenant.users().len()) {
                    Some(n) => n,
                    None => return error(400, codes::INVALID_PAGE_TOKEN, "invalid page token"),
                }
            }
        };
        let users = self.tenant.users();
        let end = (start + size).min(users.len());
        let items: Vec<_> = users[start..end]
            .iter()
            .enumerate()
            .map(|(n, u)| json!({ "user_id": u.id(kind), "feature": { "card": u.card, "face_uploaded": self.tenant.has_face(start + n) } }))
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
            // `?open_id=A&from=B`: A's face becomes B's, and the event goes out.
            ("POST", "/_emulator/replace-face") => {
                let query = req.query_pairs().unwrap_or_default();
                let param = |name: &str| {
                    query
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let (Some(target), Some(from)) = (param("open_id"), param("from")) else {
                    return error(400, codes::INVALID_PARAM, "give open_id and from");
                };
                let (Some(i), Some(j)) = (
                    self.tenant.find(IdKind::OpenId, &target),
                    self.tenant.find(IdKind::OpenId, &from),
                ) else {
                    return error(404, codes::USER_NOT_FOUND, "no such user");
                };
                let Some(bytes) = self.tenant.face(j, false) else {
                    return error(404, codes::FACE_NOT_FOUND, "no face to copy");
                };
                self.tenant.replace_face(i, false, bytes.to_vec());
                Response::json(
                    200,
                    &json!({ "message_id": self.push_user_updated(&target, true, 1) }),
                )
            }
            // A device reset: every user's face is gone (no events).
            ("POST", "/_emulator/remove-faces") => {
                for i in 0..self.tenant.users().len() {
                    self.tenant.set_has_face(i, false);
                }
                Response::json(200, &json!({ "ok": true }))
            }
            ("POST", "/_emulator/expire-tokens") => {
                self.expire_tokens();
                Response::json(200, &json!({ "ok": true }))
            }
            // `?fault=Reset&rate=0.3` fails that share of face requests;
            // no query clears every fault.
            ("POST", "/_emulator/faults") => {
                let query = req.query_pairs().unwrap_or_default();
                let param = |name: &str| {
                    query
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                let Some(fault) = param("fault") else {
                    self.behave().faults.clear();
                    return Response::json(200, &json!({ "ok": true }));
                };
                let Some(fault) = WireFault::ALL
                    .into_iter()
                    .find(|f| format!("{f:?}") == fault)
                else {
                    return error(400, codes::INVALID_PARAM, "unknown fault");
                };
                let rate = param("rate").and_then(|r| r.parse().ok()).unwrap_or(1.0);
                self.behave().faults.push((Route::Face, fault, rate));
                Response::json(200, &json!({ "ok": true }))
            }
            ("GET", "/_emulator/stats") => {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for r in self.lock_log().iter() {
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
            _ => error(404, codes::NO_SUCH_PATH, "no such control route"),
        }
    }
}
