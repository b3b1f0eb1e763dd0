#!/usr/bin/env bash
# Installs the pinned schemathesis (requirements.txt beside this file) into a
# virtualenv at target/schemathesis, unless that venv already has exactly
# these requirements, and prints the path of its `st` command.
#
# scripts/test.sh runs it before the suite; tests/schemathesis.rs runs it too
# when SCHEMATHESIS is not set, so `cargo test` alone also works. Needs
# python3 (>= 3.10) with the venv module, and PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
req="$root/tests/schemathesis/requirements.txt"
venv="${SCHEMATHESIS_VENV:-$root/target/schemathesis}"
if [ ! -x "$venv/bin/st" ] || ! cmp -s "$req" "$venv/requirements.installed"; then
    echo "installing schemathesis into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    cp "$req" "$venv/requirements.installed"
fi
echo "$venv/bin/st"
