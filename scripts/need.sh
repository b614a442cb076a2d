#!/usr/bin/env bash
# Installs the Debian packages whose commands are missing.
# Usage: scripts/need.sh COMMAND:PACKAGE ...   e.g. scripts/need.sh rsync:rsync identify:imagemagick
set -euo pipefail
missing=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "==> installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
