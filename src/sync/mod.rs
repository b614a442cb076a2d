//! Concurrency plumbing shared by the layers: callers of one key sharing one
//! computation, a fixed pool of threads for work that waits, and the byte
//! budget of faces in memory.

pub mod byte_budget;
pub mod single_flight;
pub mod worker_pool;
