"""Every pin in envs/*.yaml agrees with requirements.lock, the venv's single source of truth."""

import re

import pytest
import yaml
from helpers import ROOT

LOCK = {
    m.group(1).lower().replace("_", "-"): m.group(2)
    for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
}
ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def test_there_is_an_env_per_rule_family():
    assert {p.stem for p in ENVS} >= {"generate", "data", "train"}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_lock(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert pip, env
    for line in pip:
        name, _, version = line.partition("==")
        assert version, f"{env.name}: {line} is not pinned with =="
        assert LOCK.get(name.lower().replace("_", "-")) == version, (
            f"{env.name}: {line} disagrees with the lock"
        )
    assert "python=3.11" in spec["dependencies"]


def test_lock_keeps_triton_out_and_pins_xtuner_stack():
    assert "triton" not in LOCK
    assert LOCK["xtuner"] == "0.2.0"
    assert LOCK["transformers"] == "4.48.0"
    assert LOCK["torch"] == "2.14.1"
    assert LOCK["torchvision"] == "0.29.1"
    assert LOCK["snakemake"].startswith("9.")


def test_venv_has_no_triton_and_peft_lora_imports():
    import subprocess
    import sys

    code = "import importlib.util, peft.tuners.lora; assert importlib.util.find_spec('triton') is None"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_reinstalling_from_the_lock_cannot_bring_triton_back(tmp_path):
    """The bootstrap installs the lock with --no-deps: pip's plan for a forced reinstall has no triton."""
    import json
    import subprocess
    import sys

    report = tmp_path / "plan.json"
    lock = [
        line
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if not line.startswith("deepspeed")
    ]
    (tmp_path / "lock.txt").write_text("\n".join(lock) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "-q",
            "--report",
            str(report),
            "-r",
            str(tmp_path / "lock.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "torch" in names and "bitsandbytes" in names
    assert "triton" not in names
