#!/usr/bin/env bash
# Written by tools/lock.py --envs. Snakemake runs this once inside the new conda env (--sdm conda),
# from the directory it runs in: the checkout's root.
set -euo pipefail
# These can't go through conda's pip step: xtuner pins bitsandbytes==0.45.0 (no CUDA 12.8 library),
# and deepspeed's setup.py imports torch. Same pins and hashes as requirements.lock.
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
cat > "$req" <<'EOF'
xtuner==0.2.0 --hash=sha256:5b59e7e194d78579c3d00a9a68ea7195472869d7a4601d692ce200224ac86443 --hash=sha256:bcb5e28116e7ac9474bcd71ba8e1c9cc95256ee8a2f6831818985c0d20b68440
deepspeed==0.16.2 --hash=sha256:a5b45fdefae65ab48aa30873d3c4d6ec85993eee232aa3a088087c9b88b22281
EOF
python -m pip install --no-deps --require-hashes --no-build-isolation -r "$req"
# The rules' scripts import zhufu: install this checkout editable (so an edit of the code needs no
# new env), with no dependencies of its own beyond what the env pins.
[ -f pyproject.toml ] && [ -d zhufu ] || { echo "run snakemake from the Zhufu checkout" >&2; exit 1; }
python -m pip install --no-deps --no-build-isolation -e .
