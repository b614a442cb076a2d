//! Concurrency plumbing shared by the layers: callers of one key sharing one
//! computation, and a fixed pool of threads for work that waits.

pub mod single_flight;
pub mod worker_pool;
