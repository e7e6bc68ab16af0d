#!/usr/bin/env bash
# Create or refresh .venv from requirements.lock. Idempotent: when the stamp matches the
# lock's hash (and the interpreter still runs), it exits at once.
#
#   tools/bootstrap.sh [VENV]      default VENV=.venv
#
# Every package is installed with --no-deps --require-hashes, so what is in the venv is exactly the lock,
# byte for byte. The lock has three sections (tools/lock.py writes them): the build tools first (a fresh
# venv has setuptools 65.5 and no wheel, and the sdists need both), then the venv, then deepspeed, whose
# sdist imports torch in its setup.py. Sdists build with --no-build-isolation against the pinned tools, so
# nothing unpinned is fetched and a cold pip cache behaves like a warm one (CI bootstraps with an empty one).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
LOCK=requirements.lock
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
want=$( (sha256sum "$LOCK" pyproject.toml tools/bootstrap.sh) | sha256sum | cut -c1-16)
stamp="$VENV/.zhufu-lock"

if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$VENV/bin/python" -c "import zhufu" 2>/dev/null; then
  exit 0
fi
echo "[bootstrap] building $VENV from $LOCK (lock hash $want)" >&2
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$stamp"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
# pip's own log lists every unused local index location; keep the output readable
filter() { grep -v -e "is ignored: it is neither a file nor a directory" -e "^$" || true; }
section() { awk -v n="$1" '/^# --- section /{s++; next} s==n' "$LOCK" > "$VENV/.lock-section$1"; }
for n in 1 2 3; do section "$n"; done
install() { "${pip[@]}" install --no-deps --require-hashes --no-build-isolation -r "$1" 2>&1 | filter; }
install "$VENV/.lock-section1"
stage=$(date +%s)
install "$VENV/.lock-section2"
install "$VENV/.lock-section3"
echo "[bootstrap] lock installed in $(( $(date +%s) - stage ))s" >&2
"${pip[@]}" install --no-deps --no-build-isolation -e . 2>&1 | filter
# The GPU stack must match: bitsandbytes needs a native library for torch's CUDA (tests/core/test_envs.py too).
"$VENV/bin/python" tools/check_stack.py >&2
echo "$want" > "$stamp"
echo "[bootstrap] done in $(( $(date +%s) - start ))s" >&2
