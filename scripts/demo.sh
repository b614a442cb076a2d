#!/usr/bin/env bash
# Mounts the built-in demo tenant and shows a face: the quickest look at facefs.
# Usage: scripts/demo.sh [MOUNTPOINT]   (default /tmp/faces)
set -euo pipefail
cd "$(dirname "$0")/.."
mnt="${1:-/tmp/faces}"

scripts/need.sh identify:imagemagick fusermount3:fuse3

echo "==> building facefs (release)"
cargo build --release --quiet
mkdir -p "$mnt"
if mountpoint -q "$mnt"; then
  echo "$mnt is already a mount point; unmount it first: umount $mnt" >&2
  exit 1
fi
echo "==> mounting the demo tenant at $mnt"
./target/release/facefs --demo "$mnt"
echo "==> ls $mnt/user_id | head"
ls "$mnt/user_id" | head
echo "==> identify \"$mnt/user_id/emp 001.jpg\""
identify "$mnt/user_id/emp 001.jpg"
echo
echo "Mounted. Try: ls -l $mnt/open_id | head; rsync -a $mnt/open_id/ /tmp/faces-backup/"
echo "Unmount with: umount $mnt"
