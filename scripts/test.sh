#!/usr/bin/env bash
# Runs the whole test suite, every tier, installing first what the tests use:
# fuse3 (fusermount3, mount.fuse3), rsync, ImageMagick (identify), setpriv,
# redis-server and redis-sentinel (started by the fleet tests on free
# loopback ports, also with TLS and as a Sentinel failover), openssl (their
# test CA),
# and the official Python SDK (lark-oapi) that checks the emulator. The
# real-mount tests need root and /dev/fuse, as on the project's machines.
# Last, the Debian package is built, installed, mounted through fstab and
# removed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/need.sh fusermount3:fuse3 rsync:rsync identify:imagemagick setpriv:util-linux redis-server:redis-server redis-sentinel:redis-sentinel openssl:openssl
[ -e /dev/fuse ] || { echo "no /dev/fuse: the real-mount tests need the fuse kernel module (modprobe fuse)" >&2; exit 1; }
scripts/need-sdk.sh

# A tier that cannot run fails the build here instead of being skipped.
export FACEFS_TEST_TIERS=all
echo "==> cargo test"
# Every test bounds its own waits; this outer bound turns a hang nobody
# foresaw into a failure with its output instead of a silent CI timeout.
timeout --kill-after=30s 40m cargo test --all-targets --no-fail-fast "$@" </dev/null

echo "==> the Debian package"
timeout --kill-after=30s 30m scripts/test-package.sh </dev/null
