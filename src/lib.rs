//! facefs: a Feishu tenant's access-control faces as read-only files.
//!
//! Layers, bottom up, one directory each:
//! - [`api`]: the client side of the Feishu API — the [`api::FaceApi`] trait,
//!   the HTTP client with its token cache, the retry and rate-limit layers,
//!   and the in-memory and fault-injecting clients tests stand in with.
//! - [`fs`]: the filesystem core over a `FaceApi`: names, inodes, listings,
//!   caches (memory, and the on-disk [`fs::store`]), read-ahead, and
//!   [`fs::FsError`], the one errno mapping. It knows nothing of FUSE.
//! - [`fuse`]: the thin adapter from the kernel (fuser) to the core.
//! - [`events`]: the event long connection (`--events`) and what an event does.
//! - [`daemon`]: the command — flags, `-o` options, mount points, detaching,
//!   signals, systemd notify, logging.
//! - [`sync`]: plumbing the layers share (single-flight, worker pool);
//!   [`metrics`]: process-wide counters and their Prometheus text.
//! - [`emulator`]: a local Feishu for tests, benchmarks and `--demo`.
//! - [`prefetch`]: `facefs prefetch`, which fills a mount's store ahead of time.

pub mod api;
pub mod daemon;
pub mod emulator;
pub mod events;
pub mod fleet;
pub mod fs;
pub mod fuse;
pub mod metrics;
pub mod prefetch;
pub mod sync;
