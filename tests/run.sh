#!/usr/bin/env bash
# Install everything the tests need, then run them all (LAN-lab tests included).
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# The LAN lab needs root, iproute2 (ip netns) and iptables (packet-loss tests); the packaging
# tests check the logrotate file with logrotate itself; the status page is tested in Chromium.
if [ "$(id -u)" = 0 ]; then
  missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v logrotate >/dev/null 2>&1 || missing+=(logrotate)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the LAN lab"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "note: not root: the LAN-lab tests will be skipped (they need ip netns)" >&2
fi

# A project-local virtualenv, so nothing depends on what the machine happens to have.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest ran no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
