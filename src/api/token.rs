//! The tenant access token: fetched from the app id and secret, cached,
//! renewed ahead of its expiry, and dropped when the API calls it invalid.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use super::{ApiError, ApiFailure};
use crate::api::secret::Secret;

/// A token as the token endpoint issued it.
pub struct IssuedToken {
    pub token: Secret,
    /// The remaining lifetime the endpoint announced (`expire`).
    pub lifetime: Duration,
}

struct Cached {
    token: Secret,
    renew_at: Instant,
}

/// Renew this long before expiry, so that a token is never used in its last
/// minutes (clocks and in-flight requests take time). The official SDKs use 3
/// to 10 minutes; a short-lived token renews at half its life instead.
const RENEW_MARGIN: Duration = Duration::from_secs(5 * 60);

/// No token is trusted longer than this, whatever its `expire` says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub struct TokenCache {
    // Held while fetching: concurrent callers wait for one renewal rather than
    // each asking the endpoint.
    cached: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache::default()
    }

    /// The current token, fetching a new one when there is none or it is
    /// due. Waiting for another caller's renewal ends at `deadline`.
    pub fn get(
        &self,
        deadline: Instant,
        fetch: impl FnOnce() -> Result<IssuedToken, ApiError>,
    ) -> Result<Secret, ApiError> {
        self.get_at(Instant::now(), deadline, fetch)
    }

    fn get_at(
        &self,
        now: Instant,
        deadline: Instant,
        fetch: impl FnOnce() -> Result<IssuedToken, ApiError>,
    ) -> Result<Secret, ApiError> {
        let Some(mut cached) = self.cached.try_lock_until(deadline) else {
            return Err(ApiError::Transient(ApiFailure::message(
                "another request's token renewal did not end in time (see --request-timeout)",
            )));
        };
        if let Some(c) = cached.as_ref().filter(|c| now < c.renew_at) {
            return Ok(c.token.clone());
        }
        let issued = fetch()?;
        let margin = RENEW_MARGIN.min(issued.lifetime / 2);
        // The lifetime comes from the network: no number it holds may panic.
        let renew_at = now
            .checked_add(issued.lifetime.saturating_sub(margin).min(MAX_LIFETIME))
            .unwrap_or(now);
        log::debug!("tenant token renewed; next renewal in {:?}", renew_at - now);
        *cached = Some(Cached {
            token: issued.token.clone(),
            renew_at,
        });
        Ok(issued.token)
    }

    /// Drops `stale` if it is still the cached token. A request that failed
    /// with an old token must not throw away a newer one another thread got.
    pub fn invalidate(&self, stale: &Secret) {
        let mut cached = self.cached.lock();
        if cached.as_ref().is_some_and(|c| &c.token == stale) {
            *cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn waiting_for_another_renewal_ends_at_the_deadline() {
        let cache = std::sync::Arc::new(TokenCache::new());
        let (started, renewing) = std::sync::mpsc::channel();
        let (finish, hold) = std::sync::mpsc::channel::<()>();
        let slow = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get(far(), || {
                    started.send(()).unwrap();
                    let _ = hold.recv();
                    issue(&Cell::new(0), 7200)
                })
            })
        };
        renewing.recv().unwrap();
        let start = Instant::now();
        let waited = cache.get(start + Duration::from_millis(100), || {
            issue(&Cell::new(0), 7200)
        });
        assert!(
            matches!(waited, Err(ApiError::Transient(_))),
            "{:?}",
            waited.map(|_| ())
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(5),
            "{took:?}"
        );
        finish.send(()).unwrap();
        assert!(slow.join().unwrap().is_ok());
    }

    fn issue(n: &Cell<u32>, lifetime: u64) -> Result<IssuedToken, ApiError> {
        n.set(n.get() + 1);
        Ok(IssuedToken {
            token: Secret::new(format!("t-{}", n.get())),
            lifetime: Duration::from_secs(lifetime),
        })
    }

    #[test]
    fn cached_until_the_renewal_margin() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let t0 = Instant::now();
        let a = cache.get_at(t0, far(), || issue(&n, 7200)).unwrap();
        let b = cache
            .get_at(t0 + Duration::from_secs(6000), far(), || issue(&n, 7200))
            .unwrap();
        assert_eq!((a.expose(), b.expose(), n.get()), ("t-1", "t-1", 1));
        // 5 minutes before expiry it is renewed, before any request can see it expire.
        let c = cache
            .get_at(t0 + Duration::from_secs(6901), far(), || issue(&n, 7200))
            .unwrap();
        assert_eq!((c.expose(), n.get()), ("t-2", 2));
    }

    #[test]
    fn short_lifetimes_renew_at_half() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let t0 = Instant::now();
        cache.get_at(t0, far(), || issue(&n, 60)).unwrap();
        cache
            .get_at(t0 + Duration::from_secs(29), far(), || issue(&n, 60))
            .unwrap();
        assert_eq!(n.get(), 1);
        cache
            .get_at(t0 + Duration::from_secs(31), far(), || issue(&n, 60))
            .unwrap();
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn an_absurd_lifetime_is_capped_not_a_panic() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let t0 = Instant::now();
        let huge = |n: &Cell<u32>| {
            n.set(n.get() + 1);
            Ok(IssuedToken {
                token: Secret::new(format!("t-{}", n.get())),
                lifetime: Duration::MAX,
            })
        };
        cache.get_at(t0, far(), || huge(&n)).unwrap();
        cache
            .get_at(t0 + Duration::from_secs(3600), far(), || huge(&n))
            .unwrap();
        assert_eq!(n.get(), 1);
        cache.get_at(t0 + MAX_LIFETIME, far(), || huge(&n)).unwrap();
        assert_eq!(n.get(), 2, "renewed within a day");
    }

    #[test]
    fn invalidate_drops_only_the_stale_token() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let first = cache.get(far(), || issue(&n, 7200)).unwrap();
        cache.invalidate(&first);
        let second = cache.get(far(), || issue(&n, 7200)).unwrap();
        assert_eq!(second.expose(), "t-2");
        cache.invalidate(&first); // another thread's late report of the old token
        assert_eq!(
            cache.get(far(), || issue(&n, 7200)).unwrap().expose(),
            "t-2"
        );
    }

    #[test]
    fn a_failed_fetch_is_returned_and_not_cached() {
        let cache = TokenCache::new();
        let err = cache.get(far(), || {
            Err(ApiError::Transient(super::super::ApiFailure::message(
                "down",
            )))
        });
        assert!(err.is_err());
        let n = Cell::new(0);
        assert_eq!(
            cache.get(far(), || issue(&n, 7200)).unwrap().expose(),
            "t-1"
        );
    }
}
