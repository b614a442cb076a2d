//! Bounded retries of transient failures, wrapped around any client so the
//! same policy serves the real API and the test doubles.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::metrics::{ApiMetrics, Outcome};
use super::throttle::{NoTurn, Pacer, Priority};
use super::Endpoint;
use super::{ApiError, ApiFailure, FaceApi, FaceBytes, ImageType, UserPage};
use crate::api::IdKind;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first back-off; each next one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts after this much time has gone into one call, so a
    /// call ends within the budget plus one request timeout.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        // Five attempts turn a 30% failure rate into 0.3^5 = 0.24% failed
        // requests, while a dead API answers EIO within seconds, not minutes.
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): exponential, with
    /// jitter so that many readers do not retry in lockstep.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        capped / 2 + capped.mul_f64(random_unit() / 2.0)
    }
}

/// A uniform number in [0, 1) from a per-thread xorshift; jitter needs no more.
fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let addr = &t as *const _ as u64;
            (t.as_nanos() as u64 ^ addr.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        let next = crate::hash::xorshift(&mut x);
        s.set(x);
        crate::hash::unit_float(next)
    })
}

/// Retries transient failures of any client within a [`RetryPolicy`], and
/// paces every attempt through a shared [`Pacer`] when given one.
pub struct RetryingApi<A> {
    inner: A,
    policy: RetryPolicy,
    limiter: Option<Arc<dyn Pacer>>,
    metrics: Arc<ApiMetrics>,
}

impl<A: FaceApi> RetryingApi<A> {
    pub fn new(inner: A, policy: RetryPolicy) -> RetryingApi<A> {
        RetryingApi {
            inner,
            policy,
            limiter: None,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (shared with the HTTP client under it).
    pub fn with_metrics(mut self, metrics: Arc<ApiMetrics>) -> RetryingApi<A> {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<ApiMetrics> {
        &self.metrics
    }

    pub fn with_rate_limit(mut self, limiter: Arc<dyn Pacer>) -> RetryingApi<A> {
        self.limiter = Some(limiter);
        self
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    fn run<T>(
        &self,
        endpoint: Endpoint,
        priority: Priority,
        what: &dyn Fn() -> String,
        call: impl Fn() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            if let Some(limiter) = &self.limiter {
                // Waiting for a turn counts against the budget like any wait;
                // a read-ahead takes only a turn within a quarter of it.
                let budget = match priority {
                    Priority::Ahead => self.policy.budget / 4,
                    _ => self.policy.budget,
                };
                match limiter.acquire(start + budget, priority) {
                    Ok(()) => {}
                    Err(NoTurn::TooLate) if priority == Priority::Ahead => {
                        return Err(ApiError::Deferred)
                    }
                    Err(NoTurn::TooLate) => {
                        return Err(ApiError::Transient(ApiFailure::message(format!(
                            "{} did not get a turn of --rate-limit within --retry-budget ({:?})",
                            what(),
                            self.policy.budget
                        ))))
                    }
                    // As the service's own quota answer would: no request until next month.
                    Err(NoTurn::MonthlyBudget { used, budget }) => {
                        return Err(ApiError::Failed(ApiFailure {
                            code: Some(super::codes::QUOTA_EXHAUSTED),
                            ..ApiFailure::message(format!(
                                "{} not sent: the fleet sent {used} requests this month, --monthly-budget is {budget}; raise it or wait for the next month",
                                what()
                            ))
                        }))
                    }
                }
            }
            let result = call();
            self.metrics.request(endpoint, Outcome::of(&result));
            let err = match result {
                Ok(value) => return Ok(value),
                // Definite answers go up as they are: the filesystem's error
                // boundary logs them once, with what the operation was.
                Err(err) if !err.is_retryable() => return Err(err),
                Err(err) => err,
            };
            let pause = match &err {
                ApiError::Throttled {
                    retry_after: Some(reset),
                    ..
                } => *reset,
                _ => self.policy.backoff(attempt),
            };
            if attempt >= self.policy.max_attempts || start.elapsed() + pause > self.policy.budget {
                log::debug!("{} failed after {attempt} attempts: {err}", what());
                return Err(err);
            }
            log::debug!(
                "{} failed (attempt {attempt}): {err}; retrying in {pause:?}",
                what()
            );
            self.metrics.retry();
            match (&err, &self.limiter) {
                // The API is saying the whole app is too fast: slow every caller.
                (ApiError::Throttled { .. }, Some(limiter)) => limiter.pause_for(pause),
                _ => std::thread::sleep(pause),
            }
            attempt += 1;
        }
    }
}

impl<A: FaceApi> FaceApi for RetryingApi<A> {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        self.run(
            Endpoint::List,
            Priority::Listed,
            &|| format!("listing {kind} users"),
            || self.inner.list_users(kind, page_token),
        )
    }

    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        priority: Priority,
    ) -> Result<FaceBytes, ApiError> {
        // The id itself is personal data: the log names only its kind.
        self.run(
            Endpoint::Face,
            priority,
            &|| format!("downloading a {kind} face"),
            || self.inner.get_face(kind, id, cropped, priority),
        )
    }

    /// Retried like a download: a PUT replaces the face, so a second one
    /// after a first whose answer was lost leaves the same face.
    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError> {
        self.run(
            Endpoint::Upload,
            Priority::Listed,
            &|| format!("uploading a {kind} face"),
            || self.inner.put_face(kind, id, image, image_type),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::failure::{FailureApi, Fault};
    use crate::api::memory::MemoryApi;
    use crate::api::throttle::RateLimiter;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: Duration::from_secs(5),
        }
    }

    fn api() -> FailureApi<MemoryApi> {
        let api = MemoryApi::new();
        api.add_user(
            &["ou_a", "on_a", "a"],
            Some(b"full".to_vec()),
            Some(b"crop".to_vec()),
        );
        FailureApi::new(api)
    }

    #[test]
    fn a_read_ahead_takes_only_a_turn_that_comes_soon() {
        let limiter = Arc::new(RateLimiter::new(0.5));
        let api = RetryingApi::new(api(), quick()).with_rate_limit(limiter.clone());
        // Nothing queued: sent at once.
        let got = api.get_face(IdKind::OpenId, "ou_a", false, Priority::Ahead);
        assert_eq!(got.unwrap().bytes, b"full");
        // A turn every 2 s, a budget of 5 s: the next turn is past a
        // quarter of it (1.25 s), so a read-ahead is not sent at all.
        let got = api.get_face(IdKind::OpenId, "ou_a", false, Priority::Ahead);
        assert!(matches!(got, Err(ApiError::Deferred)), "{got:?}");
        assert_eq!(api.inner().requests(Endpoint::Face), 1);
    }

    #[test]
    fn transient_failures_are_retried_within_the_bound() {
        let api = RetryingApi::new(api(), quick());
        api.inner()
            .fail_next(Endpoint::Face, [Fault::Transient, Fault::Transient]);
        assert_eq!(
            api.get_face(IdKind::OpenId, "ou_a", false, Priority::Listed)
                .unwrap()
                .bytes,
            b"full"
        );
        assert_eq!(api.inner().requests(Endpoint::Face), 3);

        api.inner().fail_next(
            Endpoint::Face,
            [Fault::Transient, Fault::Transient, Fault::Transient],
        );
        assert!(matches!(
            api.get_face(IdKind::OpenId, "ou_a", false, Priority::Listed),
            Err(ApiError::Transient(_))
        ));
        assert_eq!(
            api.inner().requests(Endpoint::Face),
            6,
            "exactly max_attempts requests"
        );
        // Counted as the requests went: two retries, then two more and a give-up.
        let counted = api.metrics();
        assert_eq!(counted.retries(), 4);
        assert_eq!(counted.requests(Endpoint::Face, Outcome::Transient), 5);
        assert_eq!(counted.requests(Endpoint::Face, Outcome::Ok), 1);
    }

    #[test]
    fn definite_answers_are_not_retried() {
        let api = RetryingApi::new(api(), quick());
        assert_eq!(
            api.get_face(IdKind::OpenId, "ou_missing", false, Priority::Listed),
            Err(ApiError::UserNotFound)
        );
        assert_eq!(api.inner().requests(Endpoint::Face), 1);
    }

    #[test]
    fn throttling_waits_for_the_announced_reset() {
        let api = RetryingApi::new(api(), quick());
        api.inner().fail_next(
            Endpoint::Face,
            [Fault::Throttled(Duration::from_millis(120))],
        );
        let start = Instant::now();
        assert!(api
            .get_face(IdKind::OpenId, "ou_a", true, Priority::Listed)
            .is_ok());
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn throttling_pauses_every_caller_of_the_shared_limiter() {
        let limiter = Arc::new(RateLimiter::new(1000.0));
        let api = Arc::new(
            RetryingApi::new(api(), quick()).with_rate_limit(limiter.clone() as Arc<dyn Pacer>),
        );
        api.inner().fail_next(
            Endpoint::Face,
            [Fault::Throttled(Duration::from_millis(400))],
        );
        let throttled = {
            let api = api.clone();
            std::thread::spawn(move || {
                api.get_face(IdKind::OpenId, "ou_a", false, Priority::Listed)
            })
        };
        // Once the throttled answer is in, a bystander must wait out the same pause.
        while api.inner().requests(Endpoint::Face) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        limiter
            .acquire(start + Duration::from_secs(5), Priority::Listed)
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "waited {:?}",
            start.elapsed()
        );
        assert!(throttled.join().unwrap().is_ok());
        assert_eq!(api.inner().requests(Endpoint::Face), 2);
    }

    #[test]
    fn a_rate_limit_turn_past_the_budget_fails_at_once_without_a_request() {
        let limiter = Arc::new(RateLimiter::new(1.0));
        let policy = RetryPolicy {
            budget: Duration::from_millis(200),
            ..quick()
        };
        let api = RetryingApi::new(api(), policy).with_rate_limit(limiter);
        assert!(api
            .get_face(IdKind::OpenId, "ou_a", false, Priority::Listed)
            .is_ok());
        let start = Instant::now();
        let queued = api.get_face(IdKind::OpenId, "ou_a", false, Priority::Listed);
        assert!(matches!(queued, Err(ApiError::Transient(_))), "{queued:?}");
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(api.inner().requests(Endpoint::Face), 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            assert!(p.backoff(10) <= Duration::from_millis(300));
            assert!(p.backoff(10) >= Duration::from_millis(150));
        }
    }
}
