#!/usr/bin/env bash
# The Debian package, end to end: build it, install it, mount the emulator
# through an fstab line with the installed files, read a face, unmount,
# and remove the package again (unless facefs was installed before).
set -euo pipefail
cd "$(dirname "$0")/.."

if dpkg -s facefs >/dev/null 2>&1; then
  echo "facefs is already installed as a package; test-package.sh would replace it: remove it first (dpkg -r facefs)" >&2
  exit 1
fi
scripts/package.sh
deb=$(ls -t target/debian/facefs_*.deb | head -n 1)
cargo build --release --quiet --bin facefs-emulator

work=$(mktemp -d)
emulator_pid=""
cleanup() {
  mountpoint -q "$work/mnt" && { umount "$work/mnt" || umount -l "$work/mnt"; }
  [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null
  dpkg -r facefs >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> installing $deb"
dpkg -i "$deb" >/dev/null
for f in /usr/bin/facefs /lib/systemd/system/facefs.service /usr/share/man/man1/facefs.1.gz \
         /usr/share/bash-completion/completions/facefs; do
  [ -e "$f" ] || { echo "FAIL: the package did not install $f" >&2; exit 1; }
done
man -l /usr/share/man/man1/facefs.1.gz 2>/dev/null | grep -q -- "--app-secret-file" \
  || zcat /usr/share/man/man1/facefs.1.gz | grep -q -- 'app\\-secret\\-file' \
  || { echo "FAIL: the man page does not document --app-secret-file" >&2; exit 1; }

./target/release/facefs-emulator --users 12 > "$work/emulator.txt" 2>/dev/null &
emulator_pid=$!
for _ in $(seq 100); do grep -q app_secret "$work/emulator.txt" && break; sleep 0.1; done
base_url=$(sed -n 's/^base_url=//p' "$work/emulator.txt")
install -m 600 /dev/null "$work/secret"
sed -n 's/^app_secret=//p' "$work/emulator.txt" | tr -d '\n' > "$work/secret"
mkdir "$work/mnt"
echo "facefs $work/mnt fuse.facefs _netdev,noauto,app_id=cli_emulator,app_secret_file=$work/secret,base_url=$base_url,rate_limit=100,cache_dir=$work/cache 0 0" > "$work/fstab"
grep -q '^CacheDirectory=facefs$' /lib/systemd/system/facefs.service \
  || { echo "FAIL: the unit does not keep its store in /var/cache/facefs" >&2; exit 1; }

echo "==> mount $work/mnt (fstab, installed /usr/bin/facefs)"
mount --fstab "$work/fstab" "$work/mnt"
files=$(ls "$work/mnt/open_id" | wc -l)
[ "$files" -gt 0 ] || { echo "FAIL: empty listing" >&2; exit 1; }
first=$(ls "$work/mnt/open_id" | head -n 1)
head -c 2 "$work/mnt/open_id/$first" | od -An -tx1 | grep -q "ff d8" || { echo "FAIL: not a JPEG" >&2; exit 1; }
grep " $work/mnt " /proc/mounts | grep -q "^facefs " || { echo "FAIL: not in /proc/mounts" >&2; exit 1; }
[ "$(stat -c %a "$work/cache")" = 700 ] || { echo "FAIL: the store is not private" >&2; exit 1; }
[ -n "$(find "$work/cache" -type f -path '*/faces/*' -perm 600)" ] \
  || { echo "FAIL: the face read was not stored (0600) under cache_dir" >&2; exit 1; }
umount "$work/mnt"
! mountpoint -q "$work/mnt" || { echo "FAIL: still mounted" >&2; exit 1; }
echo "package: 1 passed, 0 failed"
