//! Where Redis is and how to log in, from the URL forms Redis clients
//! share: `redis://[[user]:password@]host[:port][/db]`, `rediss://...`
//! (TLS), and `unix:///path` or `redis+unix:///path` with `?db=`, `user=`
//! and `pass=`.

use std::path::PathBuf;

use crate::api::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// Debug shows no password (a `Secret`).
#[derive(Clone, Debug)]
pub struct Address {
    pub place: Place,
    pub tls: bool,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
}

/// Why a URL is not a Redis address (never quoting it: it may hold the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("not a URL")]
    NotUrl,
    #[error("the scheme must be redis://, rediss://, unix://, redis+unix:// or redis+sentinel://")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("a port must be a number")]
    Port,
    #[error("no master name: write redis+sentinel://host:port,host:port/MASTER")]
    MasterName,
    #[error("the database must be a number, as in /0")]
    Database,
    #[error("the user name or password is not valid percent-encoded UTF-8")]
    Credentials,
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let url = url::Url::parse(text).map_err(|_| AddressError::NotUrl)?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let (place, tls, db) = match url.scheme() {
            scheme @ ("redis" | "rediss") => {
                let host = url
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or(AddressError::NoHost)?;
                let db = match url.path().trim_start_matches('/') {
                    "" => 0,
                    db => db.parse().map_err(|_| AddressError::Database)?,
                };
                let place = Place::Tcp {
                    host: host.to_owned(),
                    port: url.port().unwrap_or(6379),
                };
                (place, scheme == "rediss", db)
            }
            "unix" | "redis+unix" => {
                let db = match query("db") {
                    None => 0,
                    Some(db) => db.parse().map_err(|_| AddressError::Database)?,
                };
                (Place::Unix(PathBuf::from(url.path())), false, db)
            }
            _ => return Err(AddressError::Scheme),
        };
        let user = match url.username() {
            "" => query("user"),
            user => Some(decoded(user)?),
        };
        let password = match url.password() {
            Some(p) => Some(decoded(p)?),
            None => query("pass"),
        };
        Ok(Address {
            place,
            tls,
            user: user.filter(|u| !u.is_empty()),
            password: password.filter(|p| !p.is_empty()).map(Secret::new),
            db,
        })
    }
}

/// `text` percent-decoded, as user names and passwords in URLs are.
pub(super) fn decoded(text: &str) -> Result<String, AddressError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| AddressError::Credentials)
}

/// Where Redis is, for logs: the host and port or the socket, never the
/// user or password.
impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::Tcp { host, port } => write!(f, "{host}:{port}"),
            Place::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_forms() {
        let a = Address::parse("rediss://app:p%40ss@redis.internal:6380/3").unwrap();
        assert_eq!(
            a.place,
            Place::Tcp {
                host: "redis.internal".into(),
                port: 6380
            }
        );
        assert!(a.tls);
        assert_eq!(a.user.as_deref(), Some("app"));
        assert_eq!(a.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(a.db, 3);
        assert_eq!(a.to_string(), "redis.internal:6380");

        let a = Address::parse("redis://:pw@127.0.0.1").unwrap();
        assert!(!a.tls && a.user.is_none() && a.db == 0);
        assert_eq!(a.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(a.to_string(), "127.0.0.1:6379");

        let a = Address::parse("redis://[::1]:7000/").unwrap();
        assert_eq!(a.to_string(), "[::1]:7000");

        let a = Address::parse("redis+unix:///run/redis.sock?db=2&pass=x").unwrap();
        assert_eq!(a.place, Place::Unix("/run/redis.sock".into()));
        assert_eq!(
            (a.db, a.password.as_ref().map(Secret::expose)),
            (2, Some("x"))
        );
        assert!(Address::parse("unix:///tmp/r.sock").is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong_without_quoting() {
        assert_eq!(Address::parse("http://h").err(), Some(AddressError::Scheme));
        assert_eq!(
            Address::parse("redis://:pw@h/x").err(),
            Some(AddressError::Database)
        );
        assert_eq!(Address::parse("nonsense").err(), Some(AddressError::NotUrl));
        assert_eq!(
            Address::parse("redis://:%ff@h").err(),
            Some(AddressError::Credentials)
        );
    }
}
