//! A Feishu ACS emulator on loopback: the token, user list, user and face
//! endpoints, as strict as the real service about tokens and parameters.
//! Tests, benchmarks and `facefs --demo` run against it.

mod acs;
mod control;
pub mod face_image;
pub mod http_server;
pub mod long_connection;
pub mod multipart;
mod state;
pub mod tenant;

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::http_server::{Request, Server};
use self::state::{Behaviour, RateWindow, State};
use self::tenant::{Tenant, TenantSpec};
use crate::api::IdKind;

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

impl Route {
    /// The ACS requests, which the emulated rate limit counts.
    pub fn counts_against_limit(self) -> bool {
        matches!(
            self,
            Route::ListUsers | Route::GetUser | Route::Face | Route::Upload
        )
    }
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
    /// A 200 answer, chunked, of 1.5 GB of whitespace (not in [`WireFault::ALL`]:
    /// a bound for tests of one peer at a time).
    Flood,
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
pub(crate) const HANG: Duration = Duration::from_secs(300);

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
    /// When it arrived, on the wall clock.
    pub at: std::time::SystemTime,
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

    /// How long the injected throttling answer ([`WireFault::Throttle`])
    /// asks to wait (0.2 s unless set).
    pub fn set_throttle_reset(&self, reset: Duration) {
        self.state.behave().throttle_reset = Some(reset);
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
