#!/usr/bin/env bash
# Runs the whole test suite, installing first what the tests use: fuse3
# (fusermount3), rsync and ImageMagick (identify). Real-mount tests need root
# or /dev/fuse access; on the project's machines they run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v rsync >/dev/null || need+=(rsync)
command -v identify >/dev/null || need+=(imagemagick)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "no /dev/fuse: the real-mount tests need the fuse kernel module (modprobe fuse)" >&2; exit 1; }

echo "==> cargo test"
cargo test --all-targets --no-fail-fast "$@"
