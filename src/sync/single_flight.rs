//! Concurrent callers asking for the same key share one computation: readers
//! of one face share one download, listers of one directory one listing.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

enum State<V> {
    Running,
    Done(V),
    /// The leader panicked: no result will come, a waiter must lead anew.
    Abandoned,
}

struct Flight<V> {
    state: Mutex<State<V>>,
    done: Condvar,
}

pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

/// The leader's hold on its flight: if it is dropped before the result is
/// in (the work panicked), the waiters are told so rather than left waiting.
struct Lead<'a, K: Eq + Hash, V> {
    flights: &'a SingleFlight<K, V>,
    key: &'a K,
    flight: Arc<Flight<V>>,
}

impl<K: Eq + Hash, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        self.flights.flights.lock().remove(self.key);
        let mut state = self.flight.state.lock();
        if matches!(*state, State::Running) {
            *state = State::Abandoned;
        }
        self.flight.done.notify_all();
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` for `key` unless a call for it is under way, in which case
    /// this waits for that call and returns a clone of its result. If that
    /// call panics, one of its waiters runs its own `work` instead.
    pub fn run(&self, key: &K, work: impl FnOnce() -> V) -> V {
        let mut work = Some(work);
        loop {
            let (flight, leader) = {
                let mut flights = self.flights.lock();
                match flights.get(key) {
                    Some(f) => (f.clone(), false),
                    None => {
                        let f = Arc::new(Flight {
                            state: Mutex::new(State::Running),
                            done: Condvar::new(),
                        });
                        flights.insert(key.clone(), f.clone());
                        (f, true)
                    }
                }
            };
            if leader {
                let lead = Lead {
                    flights: self,
                    key,
                    flight,
                };
                let value = (work.take().expect("work runs once"))();
                *lead.flight.state.lock() = State::Done(value.clone());
                return value;
            }
            let mut state = flight.state.lock();
            while matches!(*state, State::Running) {
                flight.done.wait(&mut state);
            }
            if let State::Done(value) = &*state {
                return value.clone();
            }
            // Abandoned: go round and lead (or join whoever leads now).
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_one_call() {
        let flights = Arc::new(SingleFlight::<u32, u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (flights, calls, barrier) = (flights.clone(), calls.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    flights.run(&7, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        42
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 42);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Once finished, the next call runs again.
        assert_eq!(flights.run(&7, || 43), 43);
    }

    #[test]
    fn a_panicking_leader_leaves_no_waiter_stuck() {
        let flights = Arc::new(SingleFlight::<u32, u32>::default());
        let (started, leading) = std::sync::mpsc::channel();
        let leader = {
            let flights = flights.clone();
            std::thread::spawn(move || {
                flights.run(&1, || {
                    started.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!("the download code has a bug");
                })
            })
        };
        leading.recv().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|i| {
                let flights = flights.clone();
                std::thread::spawn(move || flights.run(&1, || 10 + i))
            })
            .collect();
        assert!(leader.join().is_err(), "the leader panicked");
        for waiter in waiters {
            let value = waiter.join().unwrap();
            assert!((10..13).contains(&value), "{value}");
        }
        assert_eq!(flights.run(&1, || 99), 99, "nothing is left in flight");
    }
}
