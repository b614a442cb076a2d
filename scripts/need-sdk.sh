#!/usr/bin/env bash
# Installs the official Feishu Python SDK (lark-oapi, from PyPI) into a venv
# under target/, for the test that checks the emulator answers it as the real
# service would. Prints nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.7.5
venv=target/sdk-venv
if ! "$venv/bin/python" -c "import sys; from lark_oapi.core.const import VERSION; sys.exit(VERSION != '$version')" 2>/dev/null; then
  echo "==> installing lark-oapi $version (the official Python SDK) into $venv"
  rm -rf "$venv"
  # Debian's own python3 makes venvs only with python3-venv installed.
  python3 -m venv "$venv" 2>/dev/null || { scripts/need.sh dummy-never-found:python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "lark-oapi==$version"
fi
