//! The API origin (`--base-url`): an origin, over https, plaintext only to
//! loopback; and why the HTTP client could not be set up.

use std::net::IpAddr;

use reqwest::Url;

/// Why the HTTP client cannot be set up; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid base URL {text:?}")]
    InvalidUrl {
        text: String,
        #[source]
        source: url::ParseError,
    },
    #[error("base URL {0:?} must be an origin such as https://open.feishu.cn")]
    NotAnOrigin(String),
    #[error("refusing plaintext http:// to {0}: the app secret and tokens would cross the network in clear; use https://")]
    Plaintext(String),
    #[error("base URL scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("base URL {0:?} has no host")]
    NoHost(String),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the HTTP client's threads")]
    Runtime(#[source] std::io::Error),
}

/// Checks a `--base-url`: http(s), a host, nothing after the origin but an
/// optional path prefix; plaintext only to a loopback address, because the
/// app secret and tokens travel in every request.
pub fn parse_base_url(text: &str) -> Result<Url, SetupError> {
    let url = Url::parse(text).map_err(|source| SetupError::InvalidUrl {
        text: text.to_owned(),
        source,
    })?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(SetupError::NotAnOrigin(text.to_owned()));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(SetupError::Plaintext(
                url.host_str().unwrap_or("").to_owned(),
            ))
        }
        other => return Err(SetupError::Scheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SetupError::NoHost(text.to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        assert!(parse_base_url("https://open.feishu.cn").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("http://[::1]:8080/").is_ok());
        assert!(parse_base_url("http://localhost:1").is_ok());
        let err = parse_base_url("http://open.feishu.cn")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://"), "{err}");
        assert!(parse_base_url("http://10.0.0.1").is_err());
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://x/?a=b").is_err());
        assert!(parse_base_url("open.feishu.cn").is_err());
    }
}
