//! The real client: Feishu's HTTP API over reqwest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use reqwest::Url;
use reqwest::{Client, RequestBuilder};
use serde::Deserialize;

use super::codes;
use super::metrics::{ApiMetrics, Outcome};
pub use super::origin::{parse_base_url, SetupError};
use super::token::{IssuedToken, TokenCache};
use super::Endpoint;
use super::{ApiError, ApiFailure, FaceApi, FaceBytes, ImageType, ListedUser, Priority, UserPage};
use crate::api::secret::Secret;
use crate::api::IdKind;
use crate::sync::byte_budget::{ByteBudget, MemoryHold};

/// The API's own limit on `page_size`.
pub const MAX_PAGE_SIZE: u32 = 50;
/// No face is this large; a larger answer is refused rather than held in memory.
pub const MAX_FACE_BYTES: u64 = 16 * 1024 * 1024;
/// JSON answers (lists, errors, tokens) are small.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// The longest token lifetime believed: the service promises at most 7200 s.
const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Everything but RFC 3986's unreserved characters is escaped, so an id or a
/// page token stays one path segment or one query value whatever it holds.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Face bytes in memory beyond `--cache-size`: downloads being received and
/// faces evicted while open files still read them.
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;
/// What a body of unknown length takes from the budget at a time.
const UNKNOWN_LENGTH_STEP: u64 = 512 * 1024;

pub struct HttpConfig {
    pub base_url: Url,
    pub app_id: String,
    pub app_secret: Secret,
    /// Bounds one request with everything it needs: waiting for the token,
    /// renewing it, connect, and the last body byte.
    pub request_timeout: Duration,
    /// The budget every face's bytes are held in.
    pub memory: Arc<ByteBudget>,
}

pub struct HttpApi {
    client: Client,
    /// Drives the exchanges; callers block on them from their own threads.
    runtime: tokio::runtime::Runtime,
    request_timeout: Duration,
    memory: Arc<ByteBudget>,
    base: String,
    app_id: String,
    app_secret: Secret,
    tokens: TokenCache,
    metrics: Arc<ApiMetrics>,
}

/// The JSON envelope every answer but a face download comes in.
#[derive(Deserialize, Default)]
struct Envelope {
    code: Option<i64>,
    #[serde(default)]
    msg: String,
    error: Option<ErrorDetail>,
    tenant_access_token: Option<String>,
    expire: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(alias = "logid")]
    log_id: Option<String>,
}

/// A user-list answer's `data`, read straight from the body: an id that is
/// not text must cost that id, not the page (as a `serde_json::Value` would).
#[derive(Deserialize)]
struct ListEnvelope {
    data: Option<ListData>,
}

#[derive(Deserialize)]
struct ListData {
    #[serde(default)]
    items: Vec<ListItem>,
    page_token: Option<String>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct ListItem {
    /// Raw bytes: serde_json hands a string's bytes over unchecked here, so
    /// invalid UTF-8 or a lone surrogate (as WTF-8) can be told apart.
    #[serde(deserialize_with = "raw_string")]
    user_id: Vec<u8>,
    #[serde(default)]
    feature: Feature,
}

#[derive(Deserialize, Default)]
struct Feature {
    #[serde(default)]
    face_uploaded: bool,
}

fn raw_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl serde::de::Visitor<'_> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_str<E>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }
    }
    d.deserialize_bytes(Bytes)
}

/// One answer as it came off the wire.
struct HttpAnswer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The body's share of the memory budget, for face downloads.
    held: MemoryHold,
}

impl HttpAnswer {
    fn log_id(&self, envelope: Option<&Envelope>) -> Option<String> {
        let header = |name| {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        header("x-tt-logid")
            .or_else(|| header("x-request-id"))
            .or_else(|| envelope?.error.as_ref()?.log_id.clone())
    }

    /// The envelope, when the body is a JSON object.
    fn envelope(&self) -> Option<Envelope> {
        let first = self.body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }

    fn failure(&self, envelope: Option<&Envelope>, fallback: &str) -> ApiFailure {
        ApiFailure {
            status: Some(self.status),
            code: envelope.and_then(|e| e.code),
            msg: envelope
                .map(|e| e.msg.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| fallback.to_owned()),
            log_id: self.log_id(envelope),
        }
    }

    fn error(&self, envelope: Option<&Envelope>, fallback: &str) -> ApiError {
        let retry_after = self
            .headers
            .get("x-ogw-ratelimit-reset")
            .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
        codes::classify(self.failure(envelope, fallback), retry_after)
    }

    /// The envelope of a JSON answer that reports success; any other answer
    /// becomes the matching error.
    fn success(&self) -> Result<Envelope, ApiError> {
        let envelope = self.envelope();
        match &envelope {
            Some(e) if e.code == Some(0) && (200..300).contains(&self.status) => {
                Ok(envelope.unwrap())
            }
            Some(e) if e.code.is_some_and(|c| c != 0) => Err(self.error(envelope.as_ref(), "")),
            _ if (200..300).contains(&self.status) => Err(ApiError::Transient(self.failure(
                None,
                "the API answered success without a readable JSON body",
            ))),
            _ => Err(self.error(envelope.as_ref(), "error answer without a JSON body")),
        }
    }

    fn token_error(&self) -> Option<i64> {
        self.envelope()
            .and_then(|e| e.code)
            .filter(|c| codes::is_token_error(*c))
    }
}

impl HttpApi {
    pub fn new(config: HttpConfig) -> Result<HttpApi, SetupError> {
        let client = Client::builder()
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("facefs/", env!("CARGO_PKG_VERSION")))
            // The API has no redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(SetupError::Client)?;
        // Two threads drive every connection; each caller waits on its own
        // exchange, bounded by its own deadline.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("facefs-http")
            .enable_all()
            .build()
            .map_err(SetupError::Runtime)?;
        Ok(HttpApi {
            client,
            runtime,
            request_timeout: config.request_timeout,
            memory: config.memory,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
            app_id: config.app_id,
            app_secret: config.app_secret,
            tokens: TokenCache::new(),
            metrics: Arc::default(),
        })
    }

    /// Counts token requests into `metrics` (shared with the retry layer above).
    pub fn with_metrics(mut self, metrics: Arc<ApiMetrics>) -> HttpApi {
        self.metrics = metrics;
        self
    }

    /// Gets a token now, so that bad credentials fail the mount, not the first read.
    pub fn check_credentials(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.request_timeout;
        self.tokens
            .get(deadline, || self.fetch_token(deadline))
            .map(drop)
    }

    fn fetch_token(&self, deadline: Instant) -> Result<IssuedToken, ApiError> {
        let result = self.request_token(deadline);
        self.metrics.request(Endpoint::Token, Outcome::of(&result));
        result
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        Url::parse(&format!("{}{path}", self.base)).map_err(|e| {
            ApiError::Failed(ApiFailure::message(format!(
                "cannot form a request URL: {e}"
            )))
        })
    }

    fn request_token(&self, deadline: Instant) -> Result<IssuedToken, ApiError> {
        let url = self.url("/open-apis/auth/v3/tenant_access_token/internal")?;
        let body =
            serde_json::json!({ "app_id": self.app_id, "app_secret": self.app_secret.expose() });
        let request = self
            .client
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string());
        let envelope = self
            .send(request, MAX_JSON_BYTES, None, deadline)?
            .success()?;
        match (envelope.tenant_access_token, envelope.expire) {
            (Some(token), Some(expire)) if !token.is_empty() && expire > 0 => Ok(IssuedToken {
                token: Secret::new(token),
                // The service promises at most 7200 s; a larger number is
                // not trusted further than a day.
                lifetime: Duration::from_secs(expire.min(MAX_TOKEN_LIFETIME_SECS)),
            }),
            _ => Err(ApiError::Transient(ApiFailure::message(
                "the token endpoint answered without a token or expiry",
            ))),
        }
    }

    /// Sends an authorised request made by `request`; on a token error,
    /// drops that token, gets a new one and tries once more, so a reader
    /// never sees an expiry. One deadline, `--request-timeout` from now,
    /// covers it all: waiting for another thread's token renewal, the
    /// renewal, and every byte.
    fn authorized(
        &self,
        request: impl Fn(&Client) -> RequestBuilder,
        limit: u64,
        budget: Option<&ByteBudget>,
    ) -> Result<HttpAnswer, ApiError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut renewed = false;
        loop {
            let token = self.tokens.get(deadline, || self.fetch_token(deadline))?;
            let request = request(&self.client).bearer_auth(token.expose());
            let answer = self.send(request, limit, budget, deadline)?;
            match answer.token_error() {
                Some(code) if !renewed => {
                    log::info!("the API refused the tenant token (code {code}); renewing it");
                    self.tokens.invalidate(&token);
                    renewed = true;
                }
                _ => return Ok(answer),
            }
        }
    }

    /// Sends a request and reads its whole body, at most `limit` bytes, all
    /// before `deadline`. A body cut short of its Content-Length, or by a
    /// reset, is an error, never data.
    fn send(
        &self,
        request: RequestBuilder,
        limit: u64,
        budget: Option<&ByteBudget>,
        deadline: Instant,
    ) -> Result<HttpAnswer, ApiError> {
        let exchange = exchange(request, limit, budget);
        self.runtime.block_on(async {
            match tokio::time::timeout_at(deadline.into(), exchange).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::Transient(ApiFailure::message(format!(
                    "no whole answer within {:?} (see --request-timeout; a download also waits \
                     here for memory while --cache-size plus {} MiB of faces are held)",
                    self.request_timeout,
                    IN_FLIGHT_BYTES >> 20
                )))),
            }
        })
    }
}

/// A transport error in words, without its URL (which holds a user id): what
/// happened first, then the causes reqwest wraps.
fn describe(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out (see --request-timeout)"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = what.to_owned();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn encode(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

/// Reads one exchange. With a `budget` (face downloads), the body's bytes
/// are taken from it before they arrive: the whole announced length at
/// once, so that two downloads never each hold part and wait for the rest;
/// a body of unknown length takes [`UNKNOWN_LENGTH_STEP`] at a time.
async fn exchange(
    request: RequestBuilder,
    limit: u64,
    budget: Option<&ByteBudget>,
) -> Result<HttpAnswer, ApiError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| ApiError::Transient(ApiFailure::message(describe(&e))))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let too_large = |size: String| {
        ApiError::Failed(ApiFailure {
            status: Some(status),
            msg: format!("answer of {size} bytes exceeds the {limit}-byte limit"),
            ..ApiFailure::default()
        })
    };
    if let Some(announced) = response.content_length().filter(|n| *n > limit) {
        return Err(too_large(announced.to_string()));
    }
    let mut held = MemoryHold::none();
    if let Some(budget) = budget {
        let first = response
            .content_length()
            .unwrap_or(UNKNOWN_LENGTH_STEP)
            .min(limit);
        held = budget.hold(first).await;
    }
    // Sized from Content-Length when announced, so a cached face holds no slack.
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            ApiError::Transient(ApiFailure {
                status: Some(status),
                msg: format!("body cut short: {}", describe(&e)),
                ..ApiFailure::default()
            })
        })?;
        let Some(chunk) = chunk else { break };
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        let needed = (body.len() + chunk.len()) as u64;
        if let Some(budget) = budget.filter(|_| needed > held.bytes()) {
            let more = budget.hold(needed.max(held.bytes() + UNKNOWN_LENGTH_STEP) - held.bytes());
            held.merge(more.await);
        }
        body.extend_from_slice(&chunk);
    }
    held.shrink_to(body.len() as u64);
    Ok(HttpAnswer {
        status,
        headers,
        body,
        held,
    })
}

impl FaceApi for HttpApi {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        let mut path =
            format!("/open-apis/acs/v1/users?page_size={MAX_PAGE_SIZE}&user_id_type={kind}");
        if let Some(token) = page_token {
            path.push_str("&page_token=");
            path.push_str(&encode(token));
        }
        let url = self.url(&path)?;
        page_from_answer(self.authorized(|c| c.get(url.clone()), MAX_JSON_BYTES, None)?)
    }

    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        _priority: Priority,
    ) -> Result<FaceBytes, ApiError> {
        let path = format!(
            "/open-apis/acs/v1/users/{}/face?is_cropped={cropped}&user_id_type={kind}",
            encode(id)
        );
        let url = self.url(&path)?;
        face_from_answer(self.authorized(
            |c| c.get(url.clone()),
            MAX_FACE_BYTES,
            Some(&self.memory),
        )?)
    }

    /// `multipart/form-data` with the parts the API documents: `files`
    /// (the image), `file_type` and `file_name`.
    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError> {
        let path = format!(
            "/open-apis/acs/v1/users/{}/face?user_id_type={kind}",
            encode(id)
        );
        let url = self.url(&path)?;
        let form = || {
            let file = Part::bytes(image.to_vec())
                .file_name(image_type.file_name())
                .mime_str(image_type.mime())
                .expect("a fixed, valid MIME type");
            Form::new()
                .part("files", file)
                .text("file_type", image_type.file_type())
                .text("file_name", image_type.file_name())
        };
        let answer = self.authorized(
            |c| c.put(url.clone()).multipart(form()),
            MAX_JSON_BYTES,
            None,
        )?;
        answer.success().map(drop)
    }
}

/// Reads a user-list answer. Anything but a well-formed success is an error.
fn page_from_answer(answer: HttpAnswer) -> Result<UserPage, ApiError> {
    answer.success()?;
    let data: ListData = serde_json::from_slice::<ListEnvelope>(&answer.body)
        .map_err(|e| ApiError::Failed(ApiFailure::message(format!("unreadable user list: {e}"))))?
        .data
        .ok_or_else(|| ApiError::Failed(ApiFailure::message("user list without data")))?;
    let next_page_token = match (data.has_more, data.page_token) {
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => {
            return Err(ApiError::Failed(ApiFailure::message(
                "user list says has_more but gives no page_token",
            )))
        }
        (false, _) => None,
    };
    let mut unreadable_ids = 0;
    let users = data
        .items
        .into_iter()
        .filter_map(|item| match String::from_utf8(item.user_id) {
            Ok(user_id) => Some(ListedUser {
                user_id,
                face_uploaded: item.feature.face_uploaded,
            }),
            Err(_) => {
                unreadable_ids += 1;
                None
            }
        })
        .collect();
    Ok(UserPage {
        users,
        next_page_token,
        unreadable_ids,
        fetched_at: None,
    })
}

/// Reads a face download: the body is the image itself on success; errors
/// come as JSON, sometimes with HTTP 200, and an image never starts with '{'.
fn face_from_answer(answer: HttpAnswer) -> Result<FaceBytes, ApiError> {
    if let Some(envelope) = answer.envelope().filter(|e| e.code.is_some()) {
        return Err(match envelope.code {
            Some(0) => ApiError::Failed(
                answer.failure(Some(&envelope), "a JSON answer where a face was expected"),
            ),
            _ => answer.error(Some(&envelope), ""),
        });
    }
    if !(200..300).contains(&answer.status) {
        return Err(answer.error(None, "error answer without a JSON body"));
    }
    if answer.body.is_empty() {
        return Err(ApiError::Transient(answer.failure(None, "empty face body")));
    }
    Ok(FaceBytes {
        bytes: answer.body,
        held: answer.held,
        fetched_at: None,
    })
}

#[cfg(test)]
mod tests;
