#!/usr/bin/env bash
# Create or refresh .venv from requirements.lock. Idempotent: when the stamp matches the
# lock's hash (and the interpreter still runs), it exits at once.
#
#   tools/bootstrap.sh [VENV]      default VENV=.venv
#
# The lock is installed with --no-deps, so what is in the venv is exactly the lock: a reinstall
# cannot bring triton back (see the lock's header for why it must stay out).
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
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
# pip's own log lists every unused local index location; keep the output readable
filter() { grep -v -e "is ignored: it is neither a file nor a directory" -e "^$" || true; }
grep -v -E '^(deepspeed)==' "$LOCK" > "$VENV/.lock-stage1"
"${pip[@]}" install --no-deps -r "$VENV/.lock-stage1" 2>&1 | filter
# deepspeed ships as an sdist whose setup.py imports torch: build it against the venv's torch
"${pip[@]}" install --no-deps --no-build-isolation "$(grep -E '^deepspeed==' "$LOCK")" 2>&1 | filter
"${pip[@]}" install --no-deps -e . 2>&1 | filter
"${pip[@]}" uninstall -y triton >/dev/null 2>&1 || true
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
if importlib.util.find_spec("triton") is not None:
    sys.exit("[bootstrap] triton is importable; bitsandbytes 0.45.0 would break peft")
import peft.tuners.lora  # noqa: F401  (fails if bitsandbytes reaches for triton.ops)
import xtuner.dataset  # noqa: F401
import zhufu  # noqa: F401
PY
echo "$want" > "$stamp"
echo "[bootstrap] done in $(( $(date +%s) - start ))s" >&2
