//! The emulated service: its state (the tenant, tokens, the request log,
//! what tests make it do) and how a request is routed, logged, faulted or
//! throttled before it is answered (`acs.rs`, `control.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::json;

use super::http_server::{decode, Reply, Request, Response};
use super::tenant::Tenant;
use super::{acs, control, long_connection, EmulatorConfig, LoggedRequest, Route, WireFault, HANG};
use crate::api::codes;
use crate::api::IdKind;

/// How one request misbehaves.
#[derive(Default)]
pub(super) struct Misbehaviour {
    /// The fault to give instead of the answer.
    pub(super) fault: Option<WireFault>,
    /// Refused by the emulated rate limit: the seconds until its window resets.
    pub(super) throttled: Option<f64>,
    /// The whole API is down.
    pub(super) outage: bool,
    /// How long to wait before answering.
    pub(super) latency: Duration,
}

/// What tests and benchmarks change while the emulator runs.
#[derive(Default)]
pub(super) struct Behaviour {
    pub(super) faults: Vec<(Route, WireFault, f64)>,
    pub(super) outage: bool,
    pub(super) latency: Duration,
    pub(super) rate_limit: Option<RateWindow>,
    pub(super) endless_listing: bool,
    /// The `code` the bootstrap answers instead of 0.
    pub(super) bootstrap_code: Option<i64>,
    /// The ClientConfig the bootstrap hands out (None: short test intervals).
    pub(super) client_config: Option<serde_json::Value>,
    /// The `code` uploads are refused with (HTTP 400), if any.
    pub(super) upload_refusal: Option<i64>,
    /// What the injected throttling answer asks to wait.
    pub(super) throttle_reset: Option<Duration>,
}

/// Fixed one-second windows, as the gateway's `x-ogw-ratelimit-reset` suggests.
pub(super) struct RateWindow {
    pub(super) per_second: u32,
    pub(super) window_start: Instant,
    pub(super) used: u32,
}

impl RateWindow {
    /// `None` if admitted, else the seconds until the window resets.
    pub(super) fn admit(&mut self, now: Instant) -> Option<f64> {
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

pub(super) struct State {
    pub(super) config: EmulatorConfig,
    pub(super) tenant: Tenant,
    pub(super) tokens: Mutex<HashMap<String, Instant>>,
    pub(super) log: Mutex<Vec<LoggedRequest>>,
    /// Signalled whenever a request is logged, for tests that wait for one.
    pub(super) logged: Condvar,
    pub(super) serial: AtomicU64,
    pub(super) behaviour: Mutex<Behaviour>,
    pub(super) rng: Mutex<u64>,
    pub(super) long_connection: long_connection::LongConnection,
}

pub(super) fn error(status: u16, code: i64, msg: &str) -> Response {
    Response::json(
        status,
        &json!({ "code": code, "msg": msg, "error": { "log_id": "" } }),
    )
}

pub(super) fn ok(data: serde_json::Value) -> Response {
    Response::json(200, &json!({ "code": 0, "msg": "success", "data": data }))
}

pub(super) fn invalid_param(msg: &str) -> Response {
    error(
        400,
        codes::INVALID_PARAM,
        &format!("field validation failed: {msg}"),
    )
}

impl State {
    pub(super) fn behave(&self) -> parking_lot::MutexGuard<'_, Behaviour> {
        self.behaviour.lock()
    }
    pub(super) fn random(&self) -> f64 {
        crate::hash::unit_float(crate::hash::xorshift(&mut self.rng.lock()))
    }
    /// How this request is to misbehave, as the tests set it up.
    pub(super) fn misbehave(&self, route: Route) -> Misbehaviour {
        let acs = route.counts_against_limit();
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
    pub(super) fn push_user_updated(
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
    pub(super) fn push_event(&self, payload: &[u8], fragments: usize) -> Option<String> {
        let pick = self.random();
        self.long_connection
            .shared
            .push(payload, fragments, fragments > 1, pick)
    }
    pub(super) fn lock_log(&self) -> parking_lot::MutexGuard<'_, Vec<LoggedRequest>> {
        self.log.lock()
    }
    pub(super) fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.tokens.lock().values_mut() {
            *expiry = now;
        }
    }
    pub(super) fn handle(&self, req: &Request) -> Reply {
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
            at: std::time::SystemTime::now(),
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
            Some(WireFault::Throttle) => {
                let reset = self
                    .behave()
                    .throttle_reset
                    .unwrap_or(Duration::from_millis(200));
                Reply::Respond(
                    error(429, codes::RATE_LIMITED, "request trigger frequency limit").with_header(
                        "x-ogw-ratelimit-reset",
                        &format!("{:.3}", reset.as_secs_f64()),
                    ),
                )
            }
            Some(WireFault::Hang) => Reply::Silence(HANG),
            Some(WireFault::Trickle) => Reply::Trickle(answer(req), Duration::from_millis(100)),
            Some(WireFault::Flood) => Reply::Flood(answer(req), 1536 << 20),
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
    pub(super) fn answer(&self, route: Route, user_id: Option<&str>, req: &Request) -> Response {
        match route {
            Route::Token => acs::token(self, req),
            Route::Control => control::control(self, req),
            Route::EventsEndpoint => acs::events_endpoint(self, req),
            Route::Unknown => error(404, codes::NO_SUCH_PATH, "404 page not found"),
            _ => match (acs::authorize(self, req), req.query_pairs()) {
                (Err(refusal), _) => refusal,
                (Ok(()), None) => invalid_param("query is not UTF-8"),
                (Ok(()), Some(query)) => acs::acs(self, route, user_id, &query, req),
            },
        }
    }
}
