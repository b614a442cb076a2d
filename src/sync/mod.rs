//! Concurrency plumbing shared by the layers: callers of one key sharing one
//! computation, a fixed pool of threads for work that waits, the byte
//! budget of faces in memory, and a gate tests hold work at.

pub mod byte_budget;
pub mod gate;
pub mod single_flight;
pub mod worker_pool;
