#!/usr/bin/env bash
# Runs the whole test suite, installing first what the tests use: fuse3
# (fusermount3), rsync and ImageMagick (identify). Real-mount tests need root
# or /dev/fuse access; on the project's machines they run as root. Last, the
# Debian package is built, installed, mounted through fstab and removed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/need.sh fusermount3:fuse3 rsync:rsync identify:imagemagick setpriv:util-linux
[ -e /dev/fuse ] || { echo "no /dev/fuse: the real-mount tests need the fuse kernel module (modprobe fuse)" >&2; exit 1; }

echo "==> cargo test"
cargo test --all-targets --no-fail-fast "$@"

echo "==> the Debian package"
scripts/test-package.sh
