//! The tenant access token: fetched from the app id and secret, cached,
//! renewed ahead of its expiry, and dropped when the API calls it invalid.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use super::ApiError;
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

    /// The current token, fetching a new one when there is none or it is due.
    pub fn get(
        &self,
        fetch: impl FnOnce() -> Result<IssuedToken, ApiError>,
    ) -> Result<Secret, ApiError> {
        self.get_at(Instant::now(), fetch)
    }

    fn get_at(
        &self,
        now: Instant,
        fetch: impl FnOnce() -> Result<IssuedToken, ApiError>,
    ) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock();
        if let Some(c) = cached.as_ref().filter(|c| now < c.renew_at) {
            return Ok(c.token.clone());
        }
        let issued = fetch()?;
        let margin = RENEW_MARGIN.min(issued.lifetime / 2);
        let renew_at = now + issued.lifetime.saturating_sub(margin);
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
        let a = cache.get_at(t0, || issue(&n, 7200)).unwrap();
        let b = cache
            .get_at(t0 + Duration::from_secs(6000), || issue(&n, 7200))
            .unwrap();
        assert_eq!((a.expose(), b.expose(), n.get()), ("t-1", "t-1", 1));
        // 5 minutes before expiry it is renewed, before any request can see it expire.
        let c = cache
            .get_at(t0 + Duration::from_secs(6901), || issue(&n, 7200))
            .unwrap();
        assert_eq!((c.expose(), n.get()), ("t-2", 2));
    }

    #[test]
    fn short_lifetimes_renew_at_half() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let t0 = Instant::now();
        cache.get_at(t0, || issue(&n, 60)).unwrap();
        cache
            .get_at(t0 + Duration::from_secs(29), || issue(&n, 60))
            .unwrap();
        assert_eq!(n.get(), 1);
        cache
            .get_at(t0 + Duration::from_secs(31), || issue(&n, 60))
            .unwrap();
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn invalidate_drops_only_the_stale_token() {
        let cache = TokenCache::new();
        let n = Cell::new(0);
        let first = cache.get(|| issue(&n, 7200)).unwrap();
        cache.invalidate(&first);
        let second = cache.get(|| issue(&n, 7200)).unwrap();
        assert_eq!(second.expose(), "t-2");
        cache.invalidate(&first); // another thread's late report of the old token
        assert_eq!(cache.get(|| issue(&n, 7200)).unwrap().expose(), "t-2");
    }

    #[test]
    fn a_failed_fetch_is_returned_and_not_cached() {
        let cache = TokenCache::new();
        let err = cache.get(|| {
            Err(ApiError::Transient(super::super::ApiFailure::message(
                "down",
            )))
        });
        assert!(err.is_err());
        let n = Cell::new(0);
        assert_eq!(cache.get(|| issue(&n, 7200)).unwrap().expose(), "t-1");
    }
}
