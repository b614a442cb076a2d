//! facefs: a Feishu tenant's access-control faces as read-only files.
//!
//! Layers, bottom up: [`api`] talks to the API (with [`api::memory`] standing
//! in for it in tests); [`fs`] is the filesystem core over it, with its
//! [`cache`] and [`layout`]; [`fuse`] adapts the core to the kernel; [`cli`]
//! and [`daemon`] make the command. [`emulator`] is a local Feishu for tests,
//! benchmarks and `--demo`.

pub mod api;
pub mod cache;
pub mod cli;
pub mod daemon;
pub mod emulator;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod http_server;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod mount_options;
pub mod mountpoint;
pub mod notify;
pub mod readahead;
pub mod secret;
pub mod single_flight;
pub mod worker_pool;
