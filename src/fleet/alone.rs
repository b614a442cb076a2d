//! A mount's pace while the fleet cannot share its budget: Redis failing,
//! and the changes into and out of that, when the mounts do not all know
//! yet which way they are pacing.
//!
//! - While Redis fails, each mount sends its share of `--rate-limit` for
//!   the last count of mounts it saw ([`share_of`]).
//! - Going alone, a mount drops the turns the fleet granted it and not yet
//!   sent (they were spaced among every mount's, and the others go alone
//!   too). If the fleet was sending at its limit (turns granted ahead), it
//!   starts its share only once every mount can have noticed the failure,
//!   and a second more (the silence): until then others may still send the
//!   fleet's turns, at its whole rate. A fleet with turns to spare costs
//!   its readers no such wait.
//! - Back on Redis, it keeps to its share as well for as long as the
//!   others may take to notice (the grace), then its callers still queued
//!   at the share take the fleet's turns instead. Without that, a mount
//!   that went on sending what it had queued at its share beside the
//!   fleet's whole rate overran the tenant's limit for as long as that
//!   queue lasted (69 throttled answers in a Sentinel failover).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::api::throttle::RateLimiter;

/// The requests a second each of `members` mounts sends while Redis fails.
/// The server counts in fixed one-second windows, and a mount evenly paced
/// at a fraction of a request a second more than a whole number puts one
/// more into some windows (at 1.25 a second, one window in four or five):
/// four mounts at 5/4 would overrun a limit of 5 in about one window in
/// six. At a whole number a second, each mount puts at most that many into
/// any window, so the fleet stays within the limit in every one — at the
/// cost of the fraction (4 mounts at a limit of 5: 4 a second, not 5).
/// Below one a second each, the plain fraction, at a random phase.
pub(super) fn share_of(per_second: f64, members: u64) -> f64 {
    let fraction = per_second / members as f64;
    match fraction.floor() {
        whole if whole >= 1.0 => whole,
        _ => fraction,
    }
}

/// What this mount knows of Redis's outages, and its share while one lasts.
pub(super) struct Outages {
    per_second: f64,
    /// How long the other mounts may take to notice that Redis failed.
    silence: Duration,
    /// How long they may take to notice that it answers again.
    grace: Duration,
    /// Taken before a share's own lock (its limiter's), never after it.
    state: Mutex<State>,
    /// Notified when Redis fails: callers waiting for a fleet turn drop it.
    failed: Condvar,
}

#[derive(Default)]
struct State {
    /// Outages seen so far: a turn granted in one is void in the next.
    count: u64,
    /// When Redis last failed after answering.
    down_at: Option<Instant>,
    /// When the fleet was last seen granting turns ahead (at its limit).
    queued_at: Option<Instant>,
    /// When Redis last answered after failing.
    back_at: Option<Instant>,
    share: Option<Share>,
}

struct Share {
    /// The count of mounts it is a share of.
    members: u64,
    limiter: Arc<RateLimiter>,
}

impl Outages {
    /// `notice_failure`: the longest another mount may go on believing
    /// Redis answers (it says it is alive that often, and that call fails
    /// within a timeout); `notice_return`: the longest it may go on
    /// believing Redis fails (it asks again that often).
    pub(super) fn new(per_second: f64, notice_failure: Duration, notice_return: Duration) -> Self {
        Outages {
            per_second,
            // And a second more: a server counting in fixed one-second
            // windows may have the fleet's last turns in the current one.
            silence: notice_failure + Duration::from_secs(1),
            grace: notice_return,
            state: Mutex::new(State::default()),
            failed: Condvar::new(),
        }
    }

    /// Redis failed (`up` false) or answers again (`up` true).
    pub(super) fn changed(&self, up: bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        match up {
            true => {
                state.back_at = Some(now);
                if let Some(share) = &state.share {
                    share.limiter.retire_at(now + self.grace);
                }
            }
            false => {
                state.count += 1;
                state.down_at = Some(now);
                self.failed.notify_all();
            }
        }
    }

    /// The fleet grants turns ahead: it sends at its limit.
    pub(super) fn queued(&self) {
        self.state.lock().queued_at = Some(Instant::now());
    }

    /// Which outage this is (taken before asking Redis for a turn).
    pub(super) fn current(&self) -> u64 {
        self.state.lock().count
    }

    /// Waits until `at` for a turn the fleet granted in outage `seen`;
    /// false (at once) if Redis has failed since: the turn is void.
    pub(super) fn wait_for_turn(&self, at: Instant, seen: u64) -> bool {
        let mut state = self.state.lock();
        while state.count == seen && Instant::now() < at {
            self.failed.wait_until(&mut state, at);
        }
        state.count == seen
    }

    /// The share that paces a request, if one does: when Redis fails
    /// (`alone`), or in the grace after it answered again. `members`: the
    /// last count of mounts seen.
    pub(super) fn share(&self, alone: bool, members: u64) -> Option<Arc<RateLimiter>> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let keep = match &state.share {
            None => false,
            // In a grace, Redis fails again: a new share, without one.
            Some(held) if alone => !held.limiter.retiring() && held.members == members,
            Some(held) => {
                // Redis answers, and this share was not told (made by a
                // caller that found every connection busy, or told in a
                // moment): its grace starts now.
                if !held.limiter.retiring() {
                    held.limiter.retire_at(now + self.grace);
                }
                !held.limiter.retired(now)
            }
        };
        if keep {
            return state.share.as_ref().map(|held| held.limiter.clone());
        }
        // Callers queued at the old share ask again.
        if let Some(old) = state.share.take() {
            old.limiter.retire_at(now);
        }
        let grace_ends = state
            .back_at
            .map(|back| back + self.grace)
            .filter(|ends| *ends > now && !alone);
        if !alone && grace_ends.is_none() {
            return None;
        }
        let share = share_of(self.per_second, members);
        let limiter = Arc::new(RateLimiter::new(share));
        // Not before the others can have noticed, and at a random phase,
        // so that the mounts left alone at once do not all send their
        // first request in the same instant.
        let interval = Duration::from_secs_f64(1.0 / share.max(0.001));
        let silent = match (alone, state.down_at, state.queued_at) {
            // At its limit shortly before Redis failed.
            (true, Some(down), Some(queued)) if queued + self.silence > down => {
                (down + self.silence).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        };
        limiter.pause_for(silent + crate::hash::random_up_to(interval));
        if let Some(ends) = grace_ends {
            limiter.retire_at(ends);
        }
        state.share = Some(Share {
            members,
            limiter: limiter.clone(),
        });
        Some(limiter)
    }

    /// A throttling answer: the share held, if any, pauses too.
    pub(super) fn pause_for(&self, length: Duration) {
        if let Some(share) = &self.state.lock().share {
            share.limiter.pause_for(length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::throttle::{NoSlot, Priority};

    #[test]
    fn alone_each_mount_sends_a_whole_number_a_second_where_it_can() {
        assert_eq!(share_of(5.0, 4), 1.0, "not 1.25: no window gets 6");
        assert_eq!(share_of(5.0, 1), 5.0);
        assert_eq!(share_of(50.0, 4), 12.0);
        assert_eq!(share_of(3.0, 5), 0.6, "under one a second: the fraction");
    }

    /// A fleet with turns to spare: alone at once (a phase of at most one
    /// interval, 0.2 s at 5 a second).
    #[test]
    fn no_silence_when_the_fleet_had_turns_to_spare() {
        let outages = Outages::new(5.0, Duration::from_secs(2), Duration::ZERO);
        outages.changed(false);
        let start = Instant::now();
        let share = outages.share(true, 1).unwrap();
        share
            .acquire(start + Duration::from_secs(30), Priority::Listed)
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_failure_voids_the_turns_granted_before_it() {
        let outages = Arc::new(Outages::new(5.0, Duration::from_secs(1), Duration::ZERO));
        let seen = outages.current();
        let waiting = {
            let outages = outages.clone();
            std::thread::spawn(move || {
                outages.wait_for_turn(Instant::now() + Duration::from_secs(30), seen)
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        outages.changed(false);
        assert!(!waiting.join().unwrap(), "the granted turn is dropped");
        assert!(!outages.wait_for_turn(Instant::now(), seen));
        let now = outages.current();
        assert!(outages.wait_for_turn(Instant::now() + Duration::from_millis(10), now));
    }

    /// Alone: no share until the others can have noticed, then one a
    /// second; back: the share for the grace, then none.
    #[test]
    fn the_share_starts_after_the_silence_and_ends_after_the_grace() {
        let outages = Outages::new(5.0, Duration::from_millis(500), Duration::from_millis(300));
        assert!(outages.share(false, 4).is_none(), "Redis up: no share");
        outages.queued();
        outages.changed(false);
        let share = outages.share(true, 4).unwrap();
        let start = Instant::now();
        let far = start + Duration::from_secs(30);
        share.acquire(far, Priority::Listed).unwrap();
        let first = start.elapsed();
        // The silence (0.5 s and a second's window), plus a phase of up
        // to one interval (1 s at 1/s).
        assert!(
            first >= Duration::from_millis(1400) && first < Duration::from_millis(2700),
            "{first:?}"
        );
        assert!(Arc::ptr_eq(&share, &outages.share(true, 4).unwrap()));
        // Redis answers: the share paces for the grace, then retires.
        outages.changed(true);
        assert!(Arc::ptr_eq(&share, &outages.share(false, 4).unwrap()));
        assert_eq!(share.acquire(far, Priority::Listed), Err(NoSlot::Retired));
        assert!(outages.share(false, 4).is_none(), "after the grace: none");
        // A mount that sent nothing while Redis failed keeps to a share
        // in the grace too.
        outages.changed(false);
        outages.changed(true);
        let idle = outages.share(false, 4).expect("a share in the grace");
        assert!(idle.retiring());
        // A share made while Redis answers (every connection busy) is not
        // kept past a grace either.
        std::thread::sleep(Duration::from_millis(300));
        let stray = outages.share(true, 4).unwrap();
        assert!(!stray.retiring());
        assert!(Arc::ptr_eq(&stray, &outages.share(false, 4).unwrap()));
        assert!(stray.retiring(), "its grace starts when Redis is seen up");
    }
}
