//! The client's own request rate: one pacer shared by every thread, which a
//! throttling answer from the API pauses for everyone, not just its caller.
//! Requests for names a listing shows go before probes of other names, so
//! a program stat-ing random names cannot starve the readers of real faces.

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

const PACE: f64 = 0.95;

/// Why a [`RateLimiter`] gives a caller no turn.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The caller's turn would come after its deadline.
    TooLate,
    /// The limiter was retired while the caller waited (or before): its
    /// turns are no longer the ones to take (see [`RateLimiter::retire`]).
    Retired,
}

/// Why a caller gets no turn to send a request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoTurn {
    /// It would come after the caller's deadline.
    TooLate,
    /// `--monthly-budget` requests were sent this month (counted by the fleet).
    MonthlyBudget { used: u64, budget: u64 },
}

/// What paces requests: this process's [`RateLimiter`], or one that also
/// takes each turn from a budget the whole fleet shares (`crate::fleet`).
pub trait Pacer: Send + Sync {
    /// Waits for the caller's turn, if it comes before `deadline`.
    fn acquire(&self, deadline: Instant, priority: Priority) -> Result<(), NoTurn>;
    /// Holds every caller back for `length`, as the API asked.
    fn pause_for(&self, length: Duration);
}

/// As a pacer of its own, a limiter is never retired.
impl Pacer for RateLimiter {
    fn acquire(&self, deadline: Instant, priority: Priority) -> Result<(), NoTurn> {
        RateLimiter::acquire(self, deadline, priority).map_err(|_| NoTurn::TooLate)
    }

    fn pause_for(&self, length: Duration) {
        RateLimiter::pause_for(self, length);
    }
}

/// Which requests go first when both wait for a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A name a listing shows (fresh or not), a listing page, a token.
    Listed,
    /// A name no listing shows: likely a probe of one that does not
    /// exist. Takes only turns no listed request is waiting for.
    Probe,
    /// Fetched in case a reader comes for it (read-ahead): queued as a
    /// listed request, but only if its turn comes within a quarter of
    /// `--retry-budget`, so that it never pushes the readers queued behind
    /// it toward their budget; else not sent at all.
    Ahead,
}

pub struct RateLimiter {
    interval: Duration,
    state: Mutex<Slots>,
    /// Woken whenever a turn may have come free for probes.
    turn: Condvar,
    /// Woken when a time to retire is set: listed callers wait on it.
    retiring: Condvar,
}

struct Slots {
    /// The earliest time the next request may go.
    next_free: Instant,
    /// No request goes before this (a throttling answer's reset time).
    paused_until: Instant,
    /// Listed requests holding a turn not yet come: probes wait for them.
    listed_ahead: usize,
    /// From when no turn is given any more ([`RateLimiter::retire_at`]).
    retired_at: Option<Instant>,
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
                listed_ahead: 0,
                retired_at: None,
            }),
            turn: Condvar::new(),
            retiring: Condvar::new(),
        }
    }

    /// Takes the next free send time at or after `now`, as a listed caller.
    #[cfg(test)]
    fn reserve(&self, now: Instant) -> Instant {
        let mut s = self.state.lock();
        let slot = now.max(s.next_free).max(s.paused_until);
        s.next_free = slot + self.interval;
        slot
    }

    /// Waits for this caller's turn, if it comes before `deadline`; a turn
    /// that would come later is not taken, and the caller is told at once.
    /// Listed callers queue for turns in order; probes take a turn only when
    /// it is due and no listed caller is waiting, so they never queue ahead.
    pub fn acquire(&self, deadline: Instant, priority: Priority) -> Result<(), NoSlot> {
        match priority {
            Priority::Listed | Priority::Ahead => self.acquire_listed(deadline),
            Priority::Probe => self.acquire_probe(deadline),
        }
    }

    fn acquire_listed(&self, deadline: Instant) -> Result<(), NoSlot> {
        let mut s = self.state.lock();
        loop {
            if s.retired(Instant::now()) {
                return Err(NoSlot::Retired);
            }
            let now = Instant::now();
            let slot = now.max(s.next_free).max(s.paused_until);
            if slot > deadline {
                return Err(NoSlot::TooLate);
            }
            s.next_free = slot + self.interval;
            s.listed_ahead += 1;
            // Until the turn, or until the limiter retires (the lock is
            // let go while waiting).
            loop {
                let now = Instant::now();
                if now >= slot || s.retired(now) {
                    break;
                }
                let wake = s.retired_at.map_or(slot, |at| at.min(slot));
                self.retiring.wait_until(&mut s, wake);
            }
            s.listed_ahead -= 1;
            self.turn.notify_all();
            // A pause announced while this caller waited applies to it too.
            let now = Instant::now();
            if !s.retired(now) && s.paused_until <= now {
                return Ok(());
            }
        }
    }

    fn acquire_probe(&self, deadline: Instant) -> Result<(), NoSlot> {
        let mut s = self.state.lock();
        loop {
            let now = Instant::now();
            if s.retired(now) {
                return Err(NoSlot::Retired);
            }
            let due = s.next_free.max(s.paused_until);
            if s.listed_ahead == 0 && due <= now {
                s.next_free = now + self.interval;
                return Ok(());
            }
            if now >= deadline || due > deadline {
                return Err(NoSlot::TooLate);
            }
            // Until the turn is due, or until listed callers let it go
            // (or the limiter retires).
            let wake = if s.listed_ahead == 0 { due } else { deadline };
            let wake = s.retired_at.map_or(wake, |at| at.min(wake));
            self.turn.wait_until(&mut s, wake.min(deadline));
        }
    }

    /// Holds every caller back for `length`, as the API asked.
    pub fn pause_for(&self, length: Duration) {
        let mut s = self.state.lock();
        s.paused_until = s.paused_until.max(Instant::now() + length);
        self.turn.notify_all();
    }

    /// From `at` on, tells every caller waiting for a turn, and every
    /// later one, that this limiter's turns are not the ones to take any
    /// more ([`NoSlot::Retired`]): e.g. a mount's share of the fleet's
    /// rate, kept while Redis was down, once the other mounts know Redis
    /// is back. An earlier time replaces a later one, never the reverse.
    pub fn retire_at(&self, at: Instant) {
        let mut s = self.state.lock();
        s.retired_at = Some(s.retired_at.map_or(at, |old| old.min(at)));
        self.turn.notify_all();
        self.retiring.notify_all();
    }

    /// Whether a time to retire is set (reached or not).
    pub fn retiring(&self) -> bool {
        self.state.lock().retired_at.is_some()
    }

    /// Whether it has retired by `now`.
    pub fn retired(&self, now: Instant) -> bool {
        self.state.lock().retired(now)
    }
}

impl Slots {
    fn retired(&self, now: Instant) -> bool {
        self.retired_at.is_some_and(|at| now >= at)
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
        limiter
            .acquire(start + Duration::from_secs(5), Priority::Listed)
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(95));
    }

    #[test]
    fn a_turn_past_the_deadline_is_refused_at_once_and_not_taken() {
        for priority in [Priority::Listed, Priority::Probe] {
            let limiter = RateLimiter::new(1.0);
            let now = Instant::now();
            limiter
                .acquire(now + Duration::from_secs(5), Priority::Listed)
                .unwrap();
            // The next turn is about a second away: past a 100 ms deadline.
            let start = Instant::now();
            assert_eq!(
                limiter.acquire(start + Duration::from_millis(100), priority),
                Err(NoSlot::TooLate)
            );
            assert!(start.elapsed() < Duration::from_millis(50), "{priority:?}");
            // The refused caller did not push later callers back.
            let next = limiter.reserve(Instant::now());
            assert!(next - now < Duration::from_millis(1100), "{:?}", next - now);
        }
    }

    /// Callers waiting seconds for a turn are let go when the limiter
    /// retires, and no later caller gets a turn from it.
    #[test]
    fn retiring_lets_every_waiting_caller_go_when_it_is_time() {
        let limiter = Arc::new(RateLimiter::new(1.0));
        let far = Instant::now() + Duration::from_secs(30);
        limiter.acquire(far, Priority::Listed).unwrap();
        let waiting: Vec<_> = [Priority::Listed, Priority::Listed, Priority::Probe]
            .into_iter()
            .map(|priority| {
                let limiter = limiter.clone();
                std::thread::spawn(move || limiter.acquire(far, priority))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // Set to retire in 300 ms: the waiting callers go then, not before.
        let start = Instant::now();
        limiter.retire_at(start + Duration::from_millis(300));
        limiter.retire_at(start + Duration::from_secs(10)); // not later
        assert!(limiter.retiring());
        for caller in waiting {
            assert_eq!(caller.join().unwrap(), Err(NoSlot::Retired));
        }
        // Their turns were one, two and three seconds away.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_millis(800),
            "{waited:?}"
        );
        assert_eq!(limiter.acquire(far, Priority::Listed), Err(NoSlot::Retired));
    }

    /// 20 probes waiting at 10 requests a second, then one listed request:
    /// it goes next, not after the probes (2 s later).
    #[test]
    fn a_listed_request_overtakes_waiting_probes() {
        let limiter = Arc::new(RateLimiter::new(10.0));
        let far = Instant::now() + Duration::from_secs(30);
        limiter.acquire(far, Priority::Listed).unwrap();
        let probes: Vec<_> = (0..20)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    limiter.acquire(far, Priority::Probe).unwrap();
                    Instant::now()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(250));
        let start = Instant::now();
        limiter.acquire(far, Priority::Listed).unwrap();
        let listed = start.elapsed();
        assert!(
            listed < Duration::from_millis(400),
            "the listed request waited {listed:?}"
        );
        let mut times: Vec<Instant> = probes.into_iter().map(|t| t.join().unwrap()).collect();
        times.sort();
        // The probes still went at the pace, one turn each.
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(90),
                "{:?}",
                pair[1] - pair[0]
            );
        }
    }
}
