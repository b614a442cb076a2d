//! Which Redis the fleet speaks to: one server at a fixed address, or the
//! master that Redis Sentinel names, found again after each failover.
//!
//! The Sentinel form follows Lettuce's `redis-sentinel://` and kombu's
//! `sentinel://`, with the `+` that `redis+unix://` uses:
//! `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER[/db]`
//! (sentinels on port 26379 unless given; `rediss+sentinel://` for TLS to
//! the sentinels and the master). The user and password are the master's;
//! the sentinels' own, if they require one, go in `?sentinel_user=` and
//! `?sentinel_password=`.

use super::address::{decoded, Address, AddressError, Place};
use crate::api::secret::Secret;

pub const SENTINEL_PORT: u16 = 26379;

#[derive(Clone, Debug)]
pub enum Target {
    /// One server at a fixed address.
    Server(Address),
    Sentinel(Sentinels),
}

/// The sentinels to ask where the master is, and how to log in to it.
#[derive(Clone, Debug)]
pub struct Sentinels {
    /// Each sentinel's address, with the sentinels' own login.
    pub sentinels: Vec<Address>,
    /// The name the sentinels monitor the master by.
    pub master: String,
    /// TLS, user, password and database for whichever server is the
    /// master (its place is where the sentinels say).
    pub login: Address,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, AddressError> {
        let (tls, rest) = match text.split_once("://") {
            Some(("redis+sentinel", rest)) => (false, rest),
            Some(("rediss+sentinel", rest)) => (true, rest),
            _ => return Address::parse(text).map(Target::Server),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').ok_or(AddressError::MasterName)?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(decoded(user)?), Some(decoded(password)?)),
                None => (Some(decoded(info)?), None),
            },
        };
        let mut segments = path.split('/');
        let master = decoded(segments.next().unwrap_or_default())?;
        if master.is_empty() {
            return Err(AddressError::MasterName);
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(db) => db.parse().map_err(|_| AddressError::Database)?,
        };
        if segments.next().is_some() {
            return Err(AddressError::MasterName);
        }
        let mut sentinel_user = None;
        let mut sentinel_password = None;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "sentinel_user" => sentinel_user = Some(value.into_owned()),
                "sentinel_password" => sentinel_password = Some(value.into_owned()),
                _ => {}
            }
        }
        let login = |place: Place, user: Option<String>, password: Option<String>, db| Address {
            place,
            tls,
            user: user.filter(|u| !u.is_empty()),
            password: password.filter(|p| !p.is_empty()).map(Secret::new),
            db,
        };
        let sentinels = hosts
            .split(',')
            .map(|host| {
                let place = host_and_port(host)?;
                Ok(login(
                    place,
                    sentinel_user.clone(),
                    sentinel_password.clone(),
                    0,
                ))
            })
            .collect::<Result<Vec<_>, AddressError>>()?;
        let first = sentinels[0].place.clone();
        Ok(Target::Sentinel(Sentinels {
            sentinels,
            master,
            login: login(first, user, password, db),
        }))
    }

    /// Whether it carries a password (which must then not come from argv).
    pub fn has_password(&self) -> bool {
        match self {
            Target::Server(address) => address.password.is_some(),
            Target::Sentinel(s) => {
                s.login.password.is_some() || s.sentinels.iter().any(|a| a.password.is_some())
            }
        }
    }

    /// Every address known before connecting: the server, or the sentinels.
    pub fn addresses(&self) -> &[Address] {
        match self {
            Target::Server(address) => std::slice::from_ref(address),
            Target::Sentinel(s) => &s.sentinels,
        }
    }

    pub fn tls(&self) -> bool {
        self.addresses()[0].tls
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_and_port(text: &str) -> Result<Place, AddressError> {
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(AddressError::NoHost)?;
            (format!("[{host}]"), after.strip_prefix(':'))
        }
        None => match text.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        },
    };
    if host.is_empty() || host == "[]" {
        return Err(AddressError::NoHost);
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port.parse().map_err(|_| AddressError::Port)?,
    };
    Ok(Place::Tcp { host, port })
}

/// Sentinels, for logs: their hosts and the master's name, never a password.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Server(address) => write!(f, "{address}"),
            Target::Sentinel(s) => {
                let hosts: Vec<String> = s.sentinels.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "the master {} of the sentinels {}",
                    crate::text::shown(&s.master),
                    hosts.join(",")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(text: &str) -> Sentinels {
        match Target::parse(text).unwrap() {
            Target::Sentinel(s) => s,
            Target::Server(_) => panic!("not a sentinel target: {text}"),
        }
    }

    #[test]
    fn the_sentinel_form() {
        let s = sentinels("redis+sentinel://:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:5000/mymaster/2");
        let places: Vec<String> = s.sentinels.iter().map(ToString::to_string).collect();
        assert_eq!(places, ["10.0.0.1:26379", "10.0.0.2:26380", "[::1]:5000"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.login.db, 2);
        assert_eq!(s.login.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert!(!s.login.tls);
        assert!(s
            .sentinels
            .iter()
            .all(|a| a.password.is_none() && a.db == 0));

        let s = sentinels("rediss+sentinel://app:pw@h/m?sentinel_password=sp&sentinel_user=su");
        assert!(s.login.tls && s.sentinels[0].tls);
        assert_eq!(s.login.user.as_deref(), Some("app"));
        assert_eq!(s.sentinels[0].user.as_deref(), Some("su"));
        assert_eq!(
            s.sentinels[0].password.as_ref().map(Secret::expose),
            Some("sp")
        );
        let target = Target::parse("rediss+sentinel://app:pw@h/m").unwrap();
        assert!(target.has_password() && target.tls());
        assert_eq!(target.to_string(), "the master m of the sentinels h:26379");
        assert!(!Target::parse("redis+sentinel://h/m")
            .unwrap()
            .has_password());

        // The other forms are one server.
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Server(_))
        ));
    }

    #[test]
    fn sentinel_errors_say_what_is_wrong() {
        for (text, error) in [
            ("redis+sentinel://h", AddressError::MasterName),
            ("redis+sentinel://h/", AddressError::MasterName),
            ("redis+sentinel://h/m/x", AddressError::Database),
            ("redis+sentinel://h/m/0/more", AddressError::MasterName),
            ("redis+sentinel://h:x/m", AddressError::Port),
            ("redis+sentinel://,h/m", AddressError::NoHost),
            ("redis+sentinel://:%ff@h/m", AddressError::Credentials),
        ] {
            assert_eq!(Target::parse(text).err(), Some(error), "{text}");
        }
    }
}
