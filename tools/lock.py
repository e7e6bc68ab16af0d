"""Write requirements.lock with sha256 hashes from PyPI, for `pip install --require-hashes`.

    python tools/lock.py                      # re-hash the pins already in requirements.lock
    python tools/lock.py --pins freeze.txt    # new pins (e.g. `pip freeze` of a venv resolved by hand)
    .venv/bin/python tools/lock.py --envs     # envs/*.yaml from the lock (needs the venv's metadata)

Input pins are `name==version` lines; comments are dropped, the header below is written anew. Each pin gets
the hashes of every file of that release that a CPython 3.11 on Linux x86_64 could install (its wheels for
cp311/abi3/py3 on manylinux/linux/any, and the sdist), read from PyPI's JSON simple API (PEP 691). The build
tools (pip, setuptools, wheel) come first and are marked, so that tools/bootstrap.sh installs them before the
rest; deepspeed comes last, since its sdist builds against the installed torch.

The conda envs (one per rule family) are cut from the lock: each env's roots (ENV_ROOTS) and everything they
require, transitively, as the venv's package metadata says, each line with the lock's pin and hashes, under
`--require-hashes` (so pip refuses any package the env does not list). Two packages can't go through conda's
pip step, which always resolves dependencies: xtuner (it pins bitsandbytes==0.45.0, which has no CUDA 12.8
library) and deepspeed (its setup.py imports torch): envs/train.post-deploy.sh, which Snakemake runs once
in the new env, installs both with --no-deps --no-build-isolation, hashes checked. Every env's post-deploy
script also installs the checkout itself, editable, since the rules' scripts import zhufu.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
INDEX = "https://pypi.org/simple"
BUILD_TOOLS = ("pip", "setuptools", "wheel")
LAST = ("deepspeed",)
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")
HEADER = """\
# Zhufu venv lock: CPython 3.11, Linux x86_64. Written by tools/lock.py; installed by tools/bootstrap.sh with
# --no-deps --require-hashes, so it must be complete: what is in the venv is exactly this file.
# GPU stack: torch 2.9.1 (PyPI's x86_64 build uses CUDA 12.8, `nvidia-*-cu12` wheels) with bitsandbytes 0.45.5,
# which ships libbitsandbytes_cuda128.so and no longer imports triton.ops, so triton stays in. transformers
# 4.48.0 and peft as XTuner 0.2.0 needs them; xtuner itself pins bitsandbytes==0.45.0 (CUDA <= 12.6 only), which
# --no-deps overrides on purpose (tests/core/test_envs.py checks that the pair matches).
# Section 1, the build tools, is installed first: a fresh `python3.11 -m venv` has setuptools 65.5 and no
# wheel, and the sdists below (deepspeed's imports torch) are built with --no-build-isolation.
"""


ENVS = ROOT / "envs"
ENV_ROOTS = {
    "generate": [
        "openai",
        "zhipuai",
        "httpx",
        "aiolimiter",
        "tenacity",
        "rich",
        "tqdm",
        "jsonschema",
        "PyYAML",
    ],
    "data": ["datasketch", "xxhash", "numpy", "matplotlib", "jsonschema", "PyYAML"],
    "train": [
        "torch",
        "torchvision",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "datasets",
        "modelscope",
        "tokenizers",
        # InternLM2's tokenizer: transformers converts its sentencepiece tokenizer.model to a fast tokenizer,
        # which needs protobuf (internlm2-chat-7b ships no tokenizer.json)
        "sentencepiece",
        "protobuf",
        "mmengine",
        "safetensors",
        "Jinja2",
        "jsonschema",
        "PyYAML",
        "xtuner",
        "deepspeed",
    ],
}
POST_DEPLOY = {"train": ["xtuner", "deepspeed"]}
ENV_PURPOSE = {
    "generate": "the generate rules (LLM calls through the openai and zhipuai SDKs)",
    "data": "the data rules (merge, clean, figures, import)",
    "train": "the train, export and evaluate rules (XTuner, transformers, peft, bitsandbytes, deepspeed)",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            pins.append((m.group(1), m.group(2)))
    return pins


def installable_here(filename: str, name: str, version: str) -> bool:
    """A file of `name==version` that CPython 3.11 on Linux x86_64 may pick."""
    if filename.endswith((".tar.gz", ".zip")):
        return True
    if not filename.endswith(".whl"):
        return False
    parts = filename[:-4].split("-")
    py, abi, plat = parts[-3], parts[-2], parts[-1]
    abis = abi.split(".")
    py_ok = any(
        t in ("cp311", "py2", "py3", "py311")
        or (t.startswith("cp3") and "abi3" in abis and int(t[3:] or 0) <= 11)
        for t in py.split(".")
    )
    abi_ok = any(t in ("cp311", "abi3", "none") for t in abis)
    plat_ok = any(t == "any" or t.endswith("x86_64") for t in plat.split("."))
    return py_ok and abi_ok and plat_ok


def release_hashes(name: str, version: str) -> list[str]:
    req = urllib.request.Request(
        f"{INDEX}/{norm(name)}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    stem = "[-_.]+".join(map(re.escape, norm(name).split("-")))
    prefix = re.compile(rf"^{stem}-{re.escape(version)}(-|\.tar\.gz$|\.zip$)", re.I)
    hashes = sorted(
        f["hashes"]["sha256"]
        for f in files
        if prefix.match(f["filename"])
        and not f.get("yanked")
        and installable_here(f["filename"], name, version)
    )
    if not hashes:
        sys.exit(f"lock: PyPI has no file of {name}=={version} for CPython 3.11 on Linux x86_64")
    return hashes


def entry(name: str, version: str) -> str:
    hashes = release_hashes(name, version)
    return " \\\n".join([f"{name}=={version}"] + [f"    --hash=sha256:{h}" for h in hashes])


def lock_entries(path: Path = LOCK) -> dict[str, str]:
    """The lock's entries by normalised name: the whole `name==version --hash=...` text of each."""
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z])", path.read_text()):
        m = PIN.match(block)
        if m:
            entries[norm(m.group(1))] = " ".join(part.strip() for part in block.replace("\\\n", " ").split())
    return entries


def closure(roots: list[str], locked: set[str]) -> set[str]:
    """The roots and what they require, transitively, by the installed packages' metadata (no extras)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in locked:
            sys.exit(f"lock: {name} is required but not in the lock")
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def write_envs(out: Path = ENVS) -> None:
    entries = lock_entries()
    for env, roots in ENV_ROOTS.items():
        later = [norm(n) for n in POST_DEPLOY.get(env, [])]
        names = closure(roots, set(entries))
        tools = [t for t in BUILD_TOOLS if t != "pip"]
        pip = ["--require-hashes"] + [entries[n] for n in tools]
        pip += [entries[n] for n in sorted(names - set(later) - set(tools))]
        lines = [
            f"# Pinned env for {ENV_PURPOSE[env]}.",
            "# Written by tools/lock.py --envs from requirements.lock: every package the env installs, transitive",
            "# ones included, with the lock's pins and hashes (tests/core/test_envs.py checks that it equals the lock).",
            f"# {env}.post-deploy.sh then installs {', '.join(later + ['zhufu'])} (see tools/lock.py for why).",
            f"name: zhufu-{env}",
            "channels:",
            "  - conda-forge",
            "  - nodefaults",
            "dependencies:",
            "  - python=3.11",
            "  - pip=24.0",
            "  - pip:",
        ]
        lines += [f"      - {json.dumps(item, ensure_ascii=False)}" for item in pip]
        (out / f"{env}.yaml").write_text("\n".join(lines) + "\n")
        script = [
            "#!/usr/bin/env bash",
            "# Written by tools/lock.py --envs. Snakemake runs this once inside the new conda env (--sdm conda),",
            "# from the directory it runs in: the checkout's root.",
            "set -euo pipefail",
        ]
        if later:
            script += [
                "# These can't go through conda's pip step: xtuner pins bitsandbytes==0.45.0 (no CUDA 12.8 library),",
                "# and deepspeed's setup.py imports torch. Same pins and hashes as requirements.lock.",
                'req="$(mktemp)"',
                "trap 'rm -f \"$req\"' EXIT",
                "cat > \"$req\" <<'EOF'",
                *[entries[n] for n in later],
                "EOF",
                'python -m pip install --no-deps --require-hashes --no-build-isolation -r "$req"',
            ]
        script += [
            "# The rules' scripts import zhufu: install this checkout editable (so an edit of the code needs no",
            "# new env), with no dependencies of its own beyond what the env pins.",
            '[ -f pyproject.toml ] && [ -d zhufu ] || { echo "run snakemake from the Zhufu checkout" >&2; exit 1; }',
            "python -m pip install --no-deps --no-build-isolation -e .",
        ]
        path = out / f"{env}.post-deploy.sh"
        path.write_text("\n".join(script) + "\n")
        path.chmod(0o755)
        print(f"lock: wrote envs/{env}.yaml ({len(pip) - 1} packages) and envs/{env}.post-deploy.sh")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pins", type=Path, default=LOCK, help="file of name==version lines (default: the lock)")
    ap.add_argument(
        "--build-tools",
        nargs=3,
        metavar=("PIP", "SETUPTOOLS", "WHEEL"),
        help="versions of pip, setuptools and wheel (default: those in the pins)",
    )
    ap.add_argument("--envs", action="store_true", help="write envs/*.yaml from the lock (run in the venv)")
    ap.add_argument("--out", type=Path, default=ENVS, help="with --envs: the folder to write (default envs/)")
    args = ap.parse_args()
    if args.envs:
        write_envs(args.out)
        return
    pins = {norm(n): (n, v) for n, v in read_pins(args.pins)}
    if args.build_tools:
        pins.update({t: (t, v) for t, v in zip(BUILD_TOOLS, args.build_tools, strict=True)})
    missing = [t for t in BUILD_TOOLS if t not in pins]
    if missing:
        sys.exit(f"lock: no pin for the build tools {missing}; pass --build-tools PIP SETUPTOOLS WHEEL")
    first = [pins.pop(t) for t in BUILD_TOOLS]
    last = [pins.pop(t) for t in LAST if t in pins]
    body = sorted(pins.values(), key=lambda p: norm(p[0]))
    out = [HEADER, "# --- section 1: build tools ---"]
    out += [entry(*p) for p in first]
    out.append("# --- section 2: the venv ---")
    out += [entry(*p) for p in body]
    out.append("# --- section 3: built against the installed torch ---")
    out += [entry(*p) for p in last]
    tmp = LOCK.with_suffix(".tmp")
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(LOCK)
    print(f"lock: wrote {LOCK.name}: {len(first) + len(body) + len(last)} pins")


if __name__ == "__main__":
    main()
