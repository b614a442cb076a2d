//! facefs: a Feishu tenant's access-control faces as files (read-only, or
//! restored by writing them with `--writable`).
//!
//! Layers, bottom up, one directory each; a module uses only those below
//! it (`tests/structure.rs` fails on a cycle):
//! - [`hash`], [`seal`], [`text`], [`net`], [`repeated_warning`],
//!   [`metrics`], [`sync`]: leaves every layer may use — FNV-1a digests and
//!   xorshift; sealing what facefs keeps outside its memory; text from peers
//!   made safe to print; connecting by a deadline; warnings a flood cannot
//!   multiply; what each layer's metrics share (values read at scrape, the
//!   text exposition); single-flight, worker pool, byte budget.
//! - [`api`]: the client side of the Feishu API — the [`api::FaceApi`] trait,
//!   the HTTP client with its token cache, the retry and rate-limit layers,
//!   the in-memory and fault-injecting clients tests stand in with, and the
//!   API's metrics.
//! - [`fs`]: the filesystem core over a `FaceApi`, a composition of parts
//!   that own their state (freshness, face tiers with the on-disk
//!   [`fs::store`], listings, read-ahead, inodes, open files, writing) and
//!   [`fs::FsError`], the one errno mapping. It knows nothing of FUSE.
//! - [`events`]: the event long connection (`--events`); it reaches the core
//!   through [`events::connection::ChangeSink`].
//! - [`fleet`]: mounts of one tenant sharing a rate budget, faces and events
//!   through Redis (`--redis`); its stream reader reaches the core through
//!   [`fleet::events::StreamTarget`].
//! - [`fuse`]: the thin adapter from the kernel (fuser) to the core, the one
//!   place that logs, counts and replies.
//! - [`daemon`]: the command — flags, `-o` options, mount points, detaching,
//!   signals, systemd notify, logging, `/metrics`.
//! - [`emulator`]: a local Feishu for tests, benchmarks and `--demo`.
//! - [`prefetch`]: `facefs prefetch`, which fills a mount's store ahead of time.

pub mod api;
pub mod daemon;
pub mod emulator;
pub mod events;
pub mod fleet;
pub mod fs;
pub mod fuse;
pub mod hash;
pub mod metrics;
pub mod net;
pub mod prefetch;
pub mod repeated_warning;
pub mod seal;
pub mod sync;
pub mod text;
