//! Concurrent callers asking for the same key share one computation: readers
//! of one face share one download, listers of one directory one listing.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

struct Flight<V> {
    result: Mutex<Option<V>>,
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

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` for `key` unless a call for it is under way, in which case
    /// this waits for that call and returns a clone of its result.
    pub fn run(&self, key: &K, work: impl FnOnce() -> V) -> V {
        let (flight, leader) = {
            let mut flights = self.flights.lock();
            match flights.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        result: Mutex::new(None),
                        done: Condvar::new(),
                    });
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut result = flight.result.lock();
            while result.is_none() {
                flight.done.wait(&mut result);
            }
            return result.clone().unwrap();
        }
        // Leaves the map even if `work` panics, so later callers are not stuck.
        struct Leave<'a, K: Eq + Hash, V>(&'a SingleFlight<K, V>, &'a K);
        impl<K: Eq + Hash, V> Drop for Leave<'_, K, V> {
            fn drop(&mut self) {
                self.0.flights.lock().remove(self.1);
            }
        }
        let leave = Leave(self, key);
        let value = work();
        drop(leave);
        *flight.result.lock() = Some(value.clone());
        flight.done.notify_all();
        value
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
}
