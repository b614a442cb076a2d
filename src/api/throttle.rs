//! The client's own request rate: one pacer shared by every thread, which a
//! throttling answer from the API pauses for everyone, not just its caller.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

const PACE: f64 = 0.95;

/// The caller's turn would come after its deadline.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueTooLong;

pub struct RateLimiter {
    interval: Duration,
    state: Mutex<Slots>,
}

struct Slots {
    /// The earliest time the next request may go.
    next_free: Instant,
    /// No request goes before this (a throttling answer's reset time).
    paused_until: Instant,
}

impl RateLimiter {
    /// Requests go at most `per_second` a second, evenly spaced: a burst
    /// would overrun a server that counts in fixed one-second windows. The
    /// pace is 5% under the limit, so that network jitter never squeezes one
    /// request too many into a server's window.
    pub fn new(per_second: f64) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / (per_second.max(0.001) * PACE)),
            state: Mutex::new(Slots {
                next_free: now,
                paused_until: now,
            }),
        }
    }

    /// Takes the next free send time at or after `now`.
    #[cfg(test)]
    fn reserve(&self, now: Instant) -> Instant {
        self.reserve_before(now, now + Duration::from_secs(1 << 30))
            .expect("no deadline")
    }

    /// Takes the next free send time, unless it comes after `deadline`.
    fn reserve_before(&self, now: Instant, deadline: Instant) -> Option<Instant> {
        let mut s = self.state.lock();
        let slot = now.max(s.next_free).max(s.paused_until);
        if slot > deadline {
            return None;
        }
        s.next_free = slot + self.interval;
        Some(slot)
    }

    /// Waits for this caller's turn, if it comes before `deadline`; a turn
    /// that would come later is not taken, and the caller is told at once.
    pub fn acquire(&self, deadline: Instant) -> Result<(), QueueTooLong> {
        loop {
            let now = Instant::now();
            let slot = self.reserve_before(now, deadline).ok_or(QueueTooLong)?;
            if slot <= now {
                return Ok(());
            }
            std::thread::sleep(slot - now);
            // A pause announced while this caller slept applies to it too.
            let paused_until = self.state.lock().paused_until;
            if paused_until <= Instant::now() {
                return Ok(());
            }
        }
    }

    /// Holds every caller back for `length`, as the API asked.
    pub fn pause_for(&self, length: Duration) {
        let mut s = self.state.lock();
        s.paused_until = s.paused_until.max(Instant::now() + length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The send times handed out, not when threads woke: those are exact.
    #[test]
    fn paces_callers_across_threads() {
        let limiter = Arc::new(RateLimiter::new(50.0));
        let slots: Vec<Instant> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .map(|_| limiter.reserve(Instant::now()))
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|t| t.join().unwrap())
            .collect();
        let mut sorted = slots.clone();
        sorted.sort();
        // 20 requests at 50/s, paced 5% under: consecutive slots are 1/47.5 s apart.
        let interval = Duration::from_secs_f64(1.0 / (50.0 * PACE));
        for pair in sorted.windows(2) {
            assert!(pair[1] - pair[0] >= interval, "{:?}", pair[1] - pair[0]);
        }
        assert_eq!(sorted.len(), 20);
    }

    #[test]
    fn a_pause_holds_everyone() {
        let limiter = RateLimiter::new(1000.0);
        limiter.pause_for(Duration::from_millis(100));
        let start = Instant::now();
        limiter.acquire(start + Duration::from_secs(5)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(95));
    }

    #[test]
    fn a_turn_past_the_deadline_is_refused_at_once_and_not_taken() {
        let limiter = RateLimiter::new(1.0);
        let now = Instant::now();
        limiter.acquire(now + Duration::from_secs(5)).unwrap();
        // The next turn is about a second away: past a 100 ms deadline.
        let start = Instant::now();
        assert_eq!(
            limiter.acquire(start + Duration::from_millis(100)),
            Err(QueueTooLong)
        );
        assert!(start.elapsed() < Duration::from_millis(50));
        // The refused caller did not push later callers back.
        let next = limiter.reserve(Instant::now());
        assert!(next - now < Duration::from_millis(1100), "{:?}", next - now);
    }
}
