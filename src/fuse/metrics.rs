//! What the FUSE adapter counts: each operation's latency, and its errors
//! by errno. The adapter's `finish` is the one place that records them.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The FUSE operations facefs counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Read,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Create,
    Write,
    Flush,
    Fsync,
    Setattr,
    Rename,
    Unlink,
    Mknod,
    Mkdir,
    Rmdir,
    Symlink,
    Link,
    Getxattr,
    Listxattr,
    Ioctl,
    Fallocate,
    CopyFileRange,
}

impl FuseOp {
    pub const ALL: [FuseOp; 27] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Release,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Readdirplus,
        FuseOp::Releasedir,
        FuseOp::Statfs,
        FuseOp::Create,
        FuseOp::Write,
        FuseOp::Flush,
        FuseOp::Fsync,
        FuseOp::Setattr,
        FuseOp::Rename,
        FuseOp::Unlink,
        FuseOp::Mknod,
        FuseOp::Mkdir,
        FuseOp::Rmdir,
        FuseOp::Symlink,
        FuseOp::Link,
        FuseOp::Getxattr,
        FuseOp::Listxattr,
        FuseOp::Ioctl,
        FuseOp::Fallocate,
        FuseOp::CopyFileRange,
    ];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Release => "release",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Readdirplus => "readdirplus",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Statfs => "statfs",
            FuseOp::Create => "create",
            FuseOp::Write => "write",
            FuseOp::Flush => "flush",
            FuseOp::Fsync => "fsync",
            FuseOp::Setattr => "setattr",
            FuseOp::Rename => "rename",
            FuseOp::Unlink => "unlink",
            FuseOp::Mknod => "mknod",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Rmdir => "rmdir",
            FuseOp::Symlink => "symlink",
            FuseOp::Link => "link",
            FuseOp::Getxattr => "getxattr",
            FuseOp::Listxattr => "listxattr",
            FuseOp::Ioctl => "ioctl",
            FuseOp::Fallocate => "fallocate",
            FuseOp::CopyFileRange => "copy_file_range",
        }
    }
}

/// Latency buckets, in seconds.
const BUCKETS: [f64; 7] = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0];

/// The errnos named in the `errno` label; any other is "other".
const ERRNOS: [(i32, &str); 15] = [
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EACCES, "EACCES"),
    (libc::EROFS, "EROFS"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EPERM, "EPERM"),
    (libc::EINVAL, "EINVAL"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::EISDIR, "EISDIR"),
    (libc::ESTALE, "ESTALE"),
    (0, "other"),
];

type OpLabel = [(&'static str, &'static str); 1];
type ErrorLabels = [(&'static str, &'static str); 2];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug)]
pub struct FuseMetrics {
    latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
}

fn errno_name(errno: i32) -> &'static str {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == errno)
        .map_or("other", |(_, name)| name)
}

impl Default for FuseMetrics {
    fn default() -> FuseMetrics {
        let metrics = FuseMetrics {
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
        };
        // Every series shows from the start, at 0.
        for op in FuseOp::ALL {
            drop(metrics.latency.get_or_create(&[("op", op.as_str())]));
            for (_, errno) in ERRNOS {
                drop(
                    metrics
                        .errors
                        .get_or_create(&[("op", op.as_str()), ("errno", errno)]),
                );
            }
        }
        metrics
    }
}

impl FuseMetrics {
    /// Records one operation, how long it took and its errno (0 for success).
    pub fn op(&self, op: FuseOp, took: Duration, errno: i32) {
        self.latency
            .get_or_create(&[("op", op.as_str())])
            .observe(took.as_secs_f64());
        if errno != 0 {
            self.errors
                .get_or_create(&[("op", op.as_str()), ("errno", errno_name(errno))])
                .inc();
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "facefs_fuse_op_seconds",
            "FUSE operations by kind: count and latency",
            self.latency.clone(),
        );
        registry.register(
            "facefs_fuse_errors",
            "FUSE operations that failed, by errno",
            self.errors.clone(),
        );
    }
}
