#!/usr/bin/env bash
# Written by tools/lock.py --envs. Snakemake runs this once inside the new conda env (--sdm conda),
# from the directory it runs in: the checkout's root.
set -euo pipefail
# The rules' scripts import zhufu: install this checkout editable (so an edit of the code needs no
# new env), with no dependencies of its own beyond what the env pins.
[ -f pyproject.toml ] && [ -d zhufu ] || { echo "run snakemake from the Zhufu checkout" >&2; exit 1; }
python -m pip install --no-deps --no-build-isolation -e .
