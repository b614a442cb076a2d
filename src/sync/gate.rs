//! A gate that callers wait at until it is opened: tests hold work (a
//! request, a disk write) at a known point, see what the rest does
//! meanwhile, then let it go. Every wait is bounded, so a test that forgets
//! to open it fails instead of hanging.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long a caller waits at a gate nobody opens.
const MAX_HOLD: Duration = Duration::from_secs(60);

#[derive(Default, Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default, Debug)]
struct GateState {
    open: bool,
    waiting: usize,
}

impl Gate {
    /// Waits until the gate is open (at most a minute).
    pub fn pass(&self) {
        let deadline = Instant::now() + MAX_HOLD;
        let mut state = self.state.lock();
        state.waiting += 1;
        self.changed.notify_all();
        while !state.open {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                log::error!("a gate was never opened; going on");
                break;
            }
        }
        state.waiting -= 1;
        self.changed.notify_all();
    }

    pub fn open(&self) {
        self.state.lock().open = true;
        self.changed.notify_all();
    }

    /// Waits until `n` callers wait at the gate; panics after `within`.
    pub fn wait_for_waiters(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut state = self.state.lock();
        while state.waiting < n {
            assert!(
                !self.changed.wait_until(&mut state, deadline).timed_out(),
                "{} callers at the gate after {within:?}, expected {n}",
                state.waiting
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn callers_wait_until_the_gate_opens() {
        let gate = Arc::new(Gate::default());
        let passed = Arc::new(Mutex::new(false));
        let (g, p) = (gate.clone(), passed.clone());
        let caller = std::thread::spawn(move || {
            g.pass();
            *p.lock() = true;
        });
        gate.wait_for_waiters(1, Duration::from_secs(10));
        assert!(!*passed.lock(), "through a closed gate");
        gate.open();
        caller.join().unwrap();
        assert!(*passed.lock());
        gate.pass();
    }
}
