//! What the API layer counts: requests by endpoint and outcome, retries,
//! throttling answers and token renewals. The layers of one client stack
//! share one [`ApiMetrics`]; the daemon registers it for `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{ApiError, Endpoint};
use crate::metrics::register_counters;

/// How one API request ended, as the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Absent,
    Throttled,
    Transient,
    Denied,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Absent,
        Outcome::Throttled,
        Outcome::Transient,
        Outcome::Denied,
        Outcome::Failed,
    ];

    pub fn of<T>(result: &Result<T, ApiError>) -> Outcome {
        use ApiError::*;
        match result {
            Ok(_) => Outcome::Ok,
            Err(UserNotFound | FaceNotFound) => Outcome::Absent,
            Err(Throttled { .. }) => Outcome::Throttled,
            // A deferred read-ahead was never sent, so never counted here.
            Err(Transient(_) | Deferred) => Outcome::Transient,
            Err(PermissionDenied(_)) => Outcome::Denied,
            Err(InvalidPageToken | BadCredentials(_) | ImageRefused(_) | Failed(_)) => {
                Outcome::Failed
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Absent => "absent",
            Outcome::Throttled => "throttled",
            Outcome::Transient => "transient",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

type RequestLabels = [(&'static str, &'static str); 2];

#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Counter,
    throttled: Counter,
    token_renewals: Counter,
}

impl Default for ApiMetrics {
    fn default() -> ApiMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        // Every series shows from the start, at 0, so a rate over it works
        // before its first request.
        for endpoint in Endpoint::ALL {
            for outcome in Outcome::ALL {
                drop(requests.get_or_create(&labels(endpoint, outcome)));
            }
        }
        ApiMetrics {
            requests,
            retries: Counter::default(),
            throttled: Counter::default(),
            token_renewals: Counter::default(),
        }
    }
}

fn labels(endpoint: Endpoint, outcome: Outcome) -> RequestLabels {
    [
        ("endpoint", endpoint.as_str()),
        ("outcome", outcome.as_str()),
    ]
}

impl ApiMetrics {
    pub fn request(&self, endpoint: Endpoint, outcome: Outcome) {
        self.requests
            .get_or_create(&labels(endpoint, outcome))
            .inc();
        if outcome == Outcome::Throttled {
            self.throttled.inc();
        }
        if (endpoint, outcome) == (Endpoint::Token, Outcome::Ok) {
            self.token_renewals.inc();
        }
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Requests to `endpoint` that ended as `outcome` so far.
    pub fn requests(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&labels(endpoint, outcome))
            .get()
    }

    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "facefs_api_requests",
            "API requests by endpoint and outcome",
            self.requests.clone(),
        );
        register_counters(
            registry,
            &[
                (
                    "facefs_api_retries",
                    "Requests retried after a transient failure or throttling",
                    &self.retries,
                ),
                (
                    "facefs_api_throttled",
                    "Throttling answers (HTTP 429 / 99991400)",
                    &self.throttled,
                ),
                (
                    "facefs_token_renewals",
                    "Tenant access tokens fetched",
                    &self.token_renewals,
                ),
            ],
        );
    }
}
