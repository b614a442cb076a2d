//! The real client: Feishu's HTTP API over reqwest.

use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::HeaderMap;
use reqwest::Url;
use serde::Deserialize;

use super::codes;
use super::token::{IssuedToken, TokenCache};
use super::Endpoint;
use super::{ApiError, ApiFailure, FaceApi, ListedUser, UserPage};
use crate::api::secret::Secret;
use crate::api::IdKind;
use crate::metrics::{Outcome, METRICS};

/// The API's own limit on `page_size`.
pub const MAX_PAGE_SIZE: u32 = 50;
/// No face is this large; a larger answer is refused rather than held in memory.
pub const MAX_FACE_BYTES: u64 = 16 * 1024 * 1024;
/// JSON answers (lists, errors, tokens) are small.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;

/// Everything but RFC 3986's unreserved characters is escaped, so an id or a
/// page token stays one path segment or one query value whatever it holds.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub struct HttpConfig {
    pub base_url: Url,
    pub app_id: String,
    pub app_secret: Secret,
    /// Bounds one HTTP exchange, connect to last body byte.
    pub request_timeout: Duration,
}

pub struct HttpApi {
    client: Client,
    base: String,
    app_id: String,
    app_secret: Secret,
    tokens: TokenCache,
}

/// Checks a `--base-url`: http(s), a host, nothing after the origin but an
/// optional path prefix; plaintext only to a loopback address, because the
/// app secret and tokens travel in every request.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid base URL {text:?}: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "base URL {text:?} must be an origin such as https://open.feishu.cn"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "refusing plaintext http:// to {}: the app secret and tokens would cross the network in clear; use https://",
                url.host_str().unwrap_or("")
            ))
        }
        other => return Err(format!("base URL scheme {other:?} is not http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("base URL {text:?} has no host"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The JSON envelope every answer but a face download comes in.
#[derive(Deserialize, Default)]
struct Envelope {
    code: Option<i64>,
    #[serde(default)]
    msg: String,
    error: Option<ErrorDetail>,
    data: Option<serde_json::Value>,
    tenant_access_token: Option<String>,
    expire: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(alias = "logid")]
    log_id: Option<String>,
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
    user_id: String,
    #[serde(default)]
    feature: Feature,
}

#[derive(Deserialize, Default)]
struct Feature {
    #[serde(default)]
    face_uploaded: bool,
}

/// One answer as it came off the wire.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
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
    fn into_success(self) -> Result<Envelope, ApiError> {
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
    pub fn new(config: HttpConfig) -> Result<HttpApi, String> {
        let client = Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("facefs/", env!("CARGO_PKG_VERSION")))
            // The API has no redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpApi {
            client,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
            app_id: config.app_id,
            app_secret: config.app_secret,
            tokens: TokenCache::new(),
        })
    }

    /// Gets a token now, so that bad credentials fail the mount, not the first read.
    pub fn check_credentials(&self) -> Result<(), ApiError> {
        self.tokens.get(|| self.fetch_token()).map(drop)
    }

    fn fetch_token(&self) -> Result<IssuedToken, ApiError> {
        let result = self.request_token();
        METRICS.api_request(Endpoint::Token, Outcome::of(&result));
        result
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        Url::parse(&format!("{}{path}", self.base)).map_err(|e| {
            ApiError::Failed(ApiFailure::message(format!(
                "cannot form a request URL: {e}"
            )))
        })
    }

    fn request_token(&self) -> Result<IssuedToken, ApiError> {
        let url = self.url("/open-apis/auth/v3/tenant_access_token/internal")?;
        let body =
            serde_json::json!({ "app_id": self.app_id, "app_secret": self.app_secret.expose() });
        let request = self
            .client
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string());
        let envelope = send(request, MAX_JSON_BYTES)?.into_success()?;
        match (envelope.tenant_access_token, envelope.expire) {
            (Some(token), Some(expire)) if !token.is_empty() && expire > 0 => Ok(IssuedToken {
                token: Secret::new(token),
                lifetime: Duration::from_secs(expire),
            }),
            _ => Err(ApiError::Transient(ApiFailure::message(
                "the token endpoint answered without a token or expiry",
            ))),
        }
    }

    /// Sends an authorised GET; on a token error, drops that token, gets a new
    /// one and tries once more, so a reader never sees an expiry.
    fn get(&self, url: Url, limit: u64) -> Result<Answer, ApiError> {
        let mut renewed = false;
        loop {
            let token = self.tokens.get(|| self.fetch_token())?;
            let answer = send(
                self.client.get(url.clone()).bearer_auth(token.expose()),
                limit,
            )?;
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

/// Sends a request and reads its whole body, at most `limit` bytes. A body
/// cut short of its Content-Length, or by a reset, is an error, never data.
fn send(request: RequestBuilder, limit: u64) -> Result<Answer, ApiError> {
    let response: Response = request
        .send()
        .map_err(|e| ApiError::Transient(ApiFailure::message(describe(&e))))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(ApiError::Failed(ApiFailure {
            status: Some(status),
            msg: format!(
                "answer of {} bytes exceeds the {limit}-byte limit",
                response.content_length().unwrap_or(0)
            ),
            ..ApiFailure::default()
        }));
    }
    // Sized from Content-Length when announced, so a cached face holds no slack.
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    response
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            ApiError::Transient(ApiFailure {
                status: Some(status),
                msg: format!("body cut short: {e}"),
                ..ApiFailure::default()
            })
        })?;
    if body.len() as u64 > limit {
        return Err(ApiError::Failed(ApiFailure {
            status: Some(status),
            msg: format!("answer exceeds the {limit}-byte limit"),
            ..ApiFailure::default()
        }));
    }
    Ok(Answer {
        status,
        headers,
        body,
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
        page_from_answer(self.get(self.url(&path)?, MAX_JSON_BYTES)?)
    }

    fn get_face(&self, kind: IdKind, id: &str, cropped: bool) -> Result<Vec<u8>, ApiError> {
        let path = format!(
            "/open-apis/acs/v1/users/{}/face?is_cropped={cropped}&user_id_type={kind}",
            encode(id)
        );
        face_from_answer(self.get(self.url(&path)?, MAX_FACE_BYTES)?)
    }
}

/// Reads a user-list answer. Anything but a well-formed success is an error.
fn page_from_answer(answer: Answer) -> Result<UserPage, ApiError> {
    let envelope = answer.into_success()?;
    let data: ListData = envelope
        .data
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ApiError::Failed(ApiFailure::message(format!("unreadable user list: {e}"))))?
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
    let users = data
        .items
        .into_iter()
        .map(|item| ListedUser {
            user_id: item.user_id,
            face_uploaded: item.feature.face_uploaded,
        })
        .collect();
    Ok(UserPage {
        users,
        next_page_token,
    })
}

/// Reads a face download: the body is the image itself on success; errors
/// come as JSON, sometimes with HTTP 200, and an image never starts with '{'.
fn face_from_answer(answer: Answer) -> Result<Vec<u8>, ApiError> {
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
    Ok(answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        assert!(parse_base_url("https://open.feishu.cn").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("http://[::1]:8080/").is_ok());
        assert!(parse_base_url("http://localhost:1").is_ok());
        let err = parse_base_url("http://open.feishu.cn").unwrap_err();
        assert!(err.contains("https://"), "{err}");
        assert!(parse_base_url("http://10.0.0.1").is_err());
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://x/?a=b").is_err());
        assert!(parse_base_url("open.feishu.cn").is_err());
    }

    fn answer(status: u16, body: &[u8]) -> Answer {
        Answer {
            status,
            headers: HeaderMap::new(),
            body: body.to_vec(),
        }
    }

    /// xorshift: the same random answers on every run.
    fn random_bytes(seed: &mut u64, max_len: usize) -> Vec<u8> {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let len = (next() as usize) % (max_len + 1);
        // Half the bodies start like JSON, to reach the envelope parser.
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && !body.is_empty() {
            body[0] = b'{';
        }
        body
    }

    #[test]
    fn random_answers_never_panic_and_never_mean_absent() {
        let mut seed = 0x1234_5678_9abc_def1;
        for i in 0..20_000 {
            let status = [200, 400, 404, 429, 500, 503][i % 6];
            let body = random_bytes(&mut seed, 64);
            for result in [
                face_from_answer(answer(status, &body)).map(drop),
                page_from_answer(answer(status, &body)).map(drop),
            ] {
                assert!(
                    !matches!(result, Err(ApiError::UserNotFound | ApiError::FaceNotFound)),
                    "{status} {body:?}"
                );
            }
            if status == 200 && body.first().is_some_and(|b| *b != b'{') {
                assert_eq!(
                    face_from_answer(answer(200, &body)).unwrap(),
                    body,
                    "any 200 that is not JSON is the image"
                );
            }
        }
    }

    #[test]
    fn error_bodies_are_read_whatever_the_status() {
        let not_found = br#"{"code":1490107,"msg":"user face not found"}"#;
        assert_eq!(
            face_from_answer(answer(400, not_found)),
            Err(ApiError::FaceNotFound)
        );
        assert_eq!(
            face_from_answer(answer(200, not_found)),
            Err(ApiError::FaceNotFound)
        );
        assert!(matches!(
            face_from_answer(answer(200, br#"{"code":0,"data":{}}"#)),
            Err(ApiError::Failed(_))
        ));
        assert!(matches!(
            face_from_answer(answer(400, b"")),
            Err(ApiError::Transient(_))
        ));
        assert!(matches!(
            face_from_answer(answer(200, b"")),
            Err(ApiError::Transient(_))
        ));
        let truncated_list = br#"{"code":0,"msg":"success","data":{"items":[],"has_more":true}}"#;
        assert!(matches!(
            page_from_answer(answer(200, truncated_list)),
            Err(ApiError::Failed(_))
        ));
        let huge_id = format!(
            r#"{{"code":0,"data":{{"items":[{{"user_id":"{}","feature":{{"face_uploaded":true}}}}],"has_more":false}}}}"#,
            "x".repeat(100_000)
        );
        assert_eq!(
            page_from_answer(answer(200, huge_id.as_bytes()))
                .unwrap()
                .users[0]
                .user_id
                .len(),
            100_000
        );
    }

    #[test]
    fn ids_become_one_segment() {
        assert_eq!(encode("a b+c%?#/.."), "a%20b%2Bc%25%3F%23%2F..");
        assert_eq!(encode("张"), "%E5%BC%A0");
        assert_eq!(encode("ou_AZ-09.~"), "ou_AZ-09.~");
    }
}
