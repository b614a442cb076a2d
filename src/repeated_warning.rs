//! A warning that can come in floods (a peer sending malformed frames by
//! the thousand, a Redis full of forged values): at most [`BURST`] lines a
//! minute, then one line when the minute is over saying how many were left
//! out, so a hostile peer cannot fill the log.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines of one warning logged per [`WINDOW`].
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct RepeatedWarning {
    state: Mutex<State>,
}

struct State {
    since: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl Default for RepeatedWarning {
    fn default() -> Self {
        RepeatedWarning::new()
    }
}

impl RepeatedWarning {
    pub const fn new() -> RepeatedWarning {
        RepeatedWarning {
            state: parking_lot::const_mutex(State {
                since: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Logs `line` at warn unless this warning had its lines this minute;
    /// at the first line of a new minute, first says how many were left out.
    pub fn warn(&self, line: impl FnOnce() -> String) {
        if let Some(left_out) = self.admit(Instant::now()) {
            if left_out > 0 {
                log::warn!(
                    "(the warning below came {left_out} more times in the last minute, not logged)"
                );
            }
            log::warn!("{}", line());
        }
    }

    /// `Some(left out before)` if a line may be logged at `now`.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        if state
            .since
            .is_none_or(|since| now.duration_since(since) >= WINDOW)
        {
            state.since = Some(now);
            state.logged = 0;
        }
        if state.logged < BURST {
            state.logged += 1;
            return Some(std::mem::take(&mut state.left_out));
        }
        state.left_out += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_a_minute_and_then_the_count() {
        let warning = RepeatedWarning::new();
        let start = Instant::now();
        let admitted = (0..100_000)
            .filter(|_| warning.admit(start).is_some())
            .count();
        assert_eq!(admitted, BURST as usize);
        let later = start + WINDOW;
        assert_eq!(warning.admit(later), Some(100_000 - u64::from(BURST)));
        assert_eq!(warning.admit(later), Some(0));
    }
}
