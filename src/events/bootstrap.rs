//! The bootstrap (`POST /callback/ws/endpoint`): the connection URL for
//! this app, and the server's ClientConfig — the ping and reconnect
//! schedule, held to documented bounds whatever the server says.

use std::io::Read;
use std::time::Duration;

use super::connection::{Ended, EventsConfig, Reached};

/// Bootstrap codes worth retrying ("system busy", "internal error"); any
/// other non-zero code is a refusal that retrying will not change.
const RETRYABLE_CODES: [i64; 2] = [1, 1_000_040_343];
/// The bootstrap answer is a small JSON object; more is refused unread.
const MAX_ANSWER: u64 = 4 << 20;

/// What a server may set, and the bounds it is held to.
pub const PING_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(120));
pub const RECONNECT_INTERVAL: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(600));
pub const RECONNECT_NONCE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(60));

/// The ClientConfig: the SDKs' defaults until the server sends its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub reconnect_count: i64,
    pub reconnect_interval: Duration,
    pub reconnect_nonce: Duration,
    pub ping_interval: Duration,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            reconnect_count: -1,
            reconnect_interval: Duration::from_secs(120),
            reconnect_nonce: Duration::from_secs(30),
            ping_interval: Duration::from_secs(120),
        }
    }
}

impl Schedule {
    /// Applies a ClientConfig JSON object (seconds), each value held to its
    /// bounds; fields it lacks or holds no number in stay as they were.
    pub fn apply(&mut self, config: &serde_json::Value) {
        let secs = |name: &str, (low, high): (Duration, Duration)| {
            config
                .get(name)
                .and_then(|v| v.as_u64())
                .map(|s| Duration::from_secs(s.min(high.as_secs())).max(low))
        };
        if let Some(count) = config.get("ReconnectCount").and_then(|v| v.as_i64()) {
            self.reconnect_count = count;
        }
        self.reconnect_interval =
            secs("ReconnectInterval", RECONNECT_INTERVAL).unwrap_or(self.reconnect_interval);
        self.reconnect_nonce =
            secs("ReconnectNonce", RECONNECT_NONCE).unwrap_or(self.reconnect_nonce);
        self.ping_interval = secs("PingInterval", PING_INTERVAL).unwrap_or(self.ping_interval);
    }
}

/// The connection URL for this app; applies the ClientConfig to `schedule`.
pub(super) fn bootstrap(
    config: &EventsConfig,
    schedule: &mut Schedule,
) -> Result<reqwest::Url, Ended> {
    let retry = |why: String| Ended::Retry {
        why,
        reached: Reached::Nothing,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| retry(format!("cannot build an HTTP client: {e}")))?;
    let endpoint = config
        .base_url
        .join("/callback/ws/endpoint")
        .map_err(|e| Ended::Fatal(format!("no bootstrap URL: {e}")))?;
    let body =
        serde_json::json!({ "AppID": config.app_id, "AppSecret": config.app_secret.expose() });
    let answer = client
        .post(endpoint)
        .header("locale", "zh")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .map_err(|e| retry(format!("the bootstrap request failed: {}", e.without_url())))?;
    if answer.status() != reqwest::StatusCode::OK {
        return Err(retry(format!(
            "the bootstrap answered HTTP {}",
            answer.status()
        )));
    }
    let too_large = || {
        retry(format!(
            "the bootstrap answer is over {} MiB",
            MAX_ANSWER >> 20
        ))
    };
    if answer.content_length().is_some_and(|n| n > MAX_ANSWER) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    answer
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| retry(format!("reading the bootstrap answer failed: {}", e.kind())))?;
    if bytes.len() as u64 > MAX_ANSWER {
        return Err(too_large());
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| retry("the bootstrap answer is not JSON".into()))?;
    let code = value.get("code").and_then(|c| c.as_i64()).unwrap_or(-1);
    let msg = value.get("msg").and_then(|m| m.as_str()).unwrap_or("");
    if code != 0 {
        let why = format!(
            "the bootstrap answered code {code} ({})",
            crate::text::shown(msg)
        );
        return Err(if RETRYABLE_CODES.contains(&code) {
            retry(why)
        } else {
            Ended::Fatal(format!(
                "{why}: check the app id and secret, and that the app is a self-built app subscribed to events in long-connection mode"
            ))
        });
    }
    if let Some(client_config) = value.pointer("/data/ClientConfig") {
        schedule.apply(client_config);
    }
    let url = value
        .pointer("/data/URL")
        .and_then(|u| u.as_str())
        .and_then(|u| reqwest::Url::parse(u).ok())
        .ok_or_else(|| retry("the bootstrap answer has no connection URL".into()))?;
    let loopback = url.host().is_some_and(|h| match h {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    });
    match url.scheme() {
        "wss" => Ok(url),
        "ws" if loopback => Ok(url),
        _ => Err(Ended::Fatal(
            "the bootstrap gave a connection URL that is not wss:// (plaintext ws:// is accepted only to loopback)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_config_is_held_to_its_bounds() {
        let mut s = Schedule::default();
        s.apply(&serde_json::json!({"PingInterval": 90, "ReconnectCount": 3, "ReconnectInterval": 0, "ReconnectNonce": "x"}));
        assert_eq!(s.ping_interval, Duration::from_secs(90));
        assert_eq!(s.reconnect_count, 3);
        assert_eq!(
            s.reconnect_interval,
            Duration::from_secs(1),
            "raised to the least"
        );
        assert_eq!(
            s.reconnect_nonce,
            Duration::from_secs(30),
            "not a number: unchanged"
        );
        s.apply(&serde_json::json!({"PingInterval": 86_400, "ReconnectInterval": 86_400, "ReconnectNonce": 0}));
        assert_eq!(s.ping_interval, PING_INTERVAL.1);
        assert_eq!(s.reconnect_interval, RECONNECT_INTERVAL.1);
        assert_eq!(s.reconnect_nonce, Duration::ZERO);
        s.apply(&serde_json::json!({"PingInterval": u64::MAX}));
        assert_eq!(s.ping_interval, PING_INTERVAL.1);
    }
}
