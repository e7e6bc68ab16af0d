"""The lock is hashed and complete, the conda envs are cut from it, and every job rule names its env."""

import importlib.metadata
import re
import subprocess
import sys
import sysconfig

import pytest
import yaml
from helpers import ROOT
from packaging.requirements import Requirement

LOCK_TEXT = (ROOT / "requirements.lock").read_text()
ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of each `name==version --hash=...` requirement in a requirements text."""
    out = {}
    for block in re.split(r"\n(?=[A-Za-z])", text.replace("\\\n", " ")):
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if m:
            out[norm(m.group(1))] = (
                m.group(2),
                frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block)),
            )
    return out


LOCK = entries(LOCK_TEXT)


def sections(text: str) -> list[dict]:
    return [entries(part) for part in re.split(r"^# --- section \d+: .*$", text, flags=re.M)[1:]]


def test_every_pin_in_the_lock_has_hashes():
    assert len(LOCK) > 150
    unhashed = [name for name, (_, hashes) in LOCK.items() if not hashes]
    assert unhashed == []


def test_build_tools_come_first_and_deepspeed_last():
    first, middle, last = sections(LOCK_TEXT)
    assert set(first) == {"pip", "setuptools", "wheel"}
    assert set(last) == {"deepspeed"}
    assert "torch" in middle and "pip" not in middle


def test_lock_pins_a_matching_gpu_stack():
    """torch 2.9.1 (CUDA 12.8 on x86_64) with bitsandbytes 0.45.5 (ships cuda128), XTuner 0.2.0's transformers."""
    version = {name: v for name, (v, _) in LOCK.items()}
    assert version["torch"] == "2.9.1" and version["torchvision"] == "0.24.1"
    assert version["bitsandbytes"] == "0.45.5"
    assert version["xtuner"] == "0.2.0" and version["transformers"] == "4.48.0"
    assert any(name.endswith("-cu12") for name in version), "torch 2.9.1's CUDA 12 runtime wheels"
    assert not any(name.endswith("-cu13") for name in version)
    assert version["snakemake"].startswith("9.")


def test_the_venv_is_the_lock():
    """What bootstrap installed is what the lock says, for every pin (the editable zhufu aside).

    Read from the venv's site-packages only: once any test has imported setuptools, sys.path also holds
    setuptools/_vendor, whose packaging 24.2 and friends are not installed packages.
    """
    site_packages = sysconfig.get_paths()["purelib"]
    installed = {
        norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=[site_packages])
    }
    wrong = {n: (v, installed.get(n)) for n, (v, _) in LOCK.items() if installed.get(n) != v}
    assert wrong == {}
    extra = set(installed) - set(LOCK) - {"zhufu"}
    assert extra == set()


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_equals_the_lock(env):
    """Every package of the env, pip section and post-deploy script, has the lock's version and hashes."""
    spec = yaml.safe_load(env.read_text())
    assert "python=3.11" in spec["dependencies"]
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert pip[0] == "--require-hashes"
    listed = entries("\n".join(pip[1:]))
    assert len(listed) == len(pip) - 1, "one requirement per line"
    post = env.with_suffix(".post-deploy.sh")
    if post.exists():
        listed.update(entries(post.read_text()))
    assert listed, env
    assert {n: listed[n] for n in listed if LOCK.get(n) != listed[n]} == {}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_is_closed_under_dependencies(env):
    """pip in --require-hashes mode refuses an unlisted dependency: every requirement is listed."""
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    names = set(entries("\n".join(pip)))
    post = env.with_suffix(".post-deploy.sh")
    if post.exists():
        names |= set(entries(post.read_text()))
    missing = set()
    for name in names:
        for spec_line in importlib.metadata.requires(name) or []:
            req = Requirement(spec_line)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and norm(req.name) not in names:
                missing.add(f"{name} needs {req.name}")
    assert missing == set()


def test_train_env_installs_xtuner_and_deepspeed_after_the_env():
    post = (ROOT / "envs" / "train.post-deploy.sh").read_text()
    assert set(entries(post)) == {"xtuner", "deepspeed"}
    assert "--no-deps --require-hashes --no-build-isolation" in post


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_every_env_installs_the_checkout_for_the_scripts(env):
    """The rules' scripts import zhufu; a conda env has it only through its post-deploy script."""
    post = env.with_suffix(".post-deploy.sh").read_text()
    assert post.rstrip().endswith("python -m pip install --no-deps --no-build-isolation -e .")
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert {"setuptools", "wheel"} <= set(entries("\n".join(pip))), "editable installs build with these"


def test_data_env_has_no_training_stack():
    spec = (ROOT / "envs" / "data.yaml").read_text()
    for heavy in ("torch==", "transformers==", "xtuner==", "pandas==", "datasets=="):
        assert heavy not in spec


def rule_blocks():
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]:
            yield smk.name, re.match(r"rule (\w+):", block).group(1), block


def test_every_job_rule_declares_a_conda_env():
    jobs = [
        (f, name, block)
        for f, name, block in rule_blocks()
        if re.search(r"^\s+(script|shell|run):", block, re.M)
    ]
    assert len(jobs) >= 10
    missing = [f"{f}:{name}" for f, name, block in jobs if not re.search(r"^\s+conda:", block, re.M)]
    assert missing == []
    for _, _, block in jobs:
        env = re.search(r"conda:\s*\n\s*\"\.\./(envs/\w+\.yaml)\"", block).group(1)
        assert (ROOT / env).is_file()


def test_lock_tool_writes_the_envs_that_are_committed(tmp_path):
    """`tools/lock.py --envs` from the lock gives exactly the committed envs (nothing edited by hand)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lock.py"), "--envs", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in (ROOT / "envs").iterdir()}
    assert written == committed
