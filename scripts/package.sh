#!/usr/bin/env bash
# Builds the Debian package (target/debian/facefs_*.deb) with cargo-deb:
# the binary, the systemd unit, the man page and shell completions.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb (once; a few minutes)"
  cargo install cargo-deb --locked --quiet
fi
echo "==> building release binaries"
cargo build --release --quiet --bin facefs --bin facefs-docs
echo "==> man page and completions"
./target/release/facefs-docs target/docs
echo "==> packaging"
cargo deb --no-build --quiet
ls target/debian/*.deb
