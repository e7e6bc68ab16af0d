"""Training refuses what it must not start on or resume from: a (nearly) empty set, a DeepSpeed checkpoint
with a rank missing or cut short, a checkpoint of a run whose DeepSpeed setting, process count or model
weights changed."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, copy_project, run_cmd

from zhufu.train.checkpoints import latest_complete_checkpoint, run_fingerprint

# --- DeepSpeed checkpoint completeness ----------------------------------------------------------------------


def torch_zip(path: Path, truncate: bool = False) -> None:
    """A file shaped like torch.save's output (a zip); truncated, it has no central directory."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"x" * 256)
    if truncate:
        path.write_bytes(path.read_bytes()[:100])


def ds_checkpoint(work_dir: Path, it: int, ranks: int, *, zero3=False, missing=None, cut=None) -> Path:
    d = work_dir / f"iter_{it}.pth"
    d.mkdir(parents=True)
    names = [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(ranks)]
    if zero3:
        names += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(ranks)]
    else:
        names.append("mp_rank_00_model_states.pt")
    for name in names:
        if name != missing:
            torch_zip(d / name, truncate=name == cut)
    (d / "zero_to_fp32.py").write_text("# recovery script\n")
    return d


@pytest.mark.parametrize("zero3", [False, True])
def test_a_deepspeed_checkpoint_needs_every_rank(tmp_path, zero3):
    good = ds_checkpoint(tmp_path, 10, 4, zero3=zero3)
    ds_checkpoint(tmp_path, 20, 4, zero3=zero3, missing="bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt")
    assert latest_complete_checkpoint(tmp_path, world_size=4) == good
    ds_checkpoint(tmp_path, 30, 4, zero3=zero3, cut="bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt")
    assert latest_complete_checkpoint(tmp_path, world_size=4) == good
    full = ds_checkpoint(tmp_path, 40, 4, zero3=zero3)
    assert latest_complete_checkpoint(tmp_path, world_size=4) == full
    assert latest_complete_checkpoint(tmp_path, world_size=8) is None  # the run had 8 ranks: none complete


def test_a_zero3_checkpoint_needs_every_ranks_model_states(tmp_path):
    good = ds_checkpoint(tmp_path, 10, 2, zero3=True)
    ds_checkpoint(tmp_path, 20, 2, zero3=True, missing="zero_pp_rank_1_mp_rank_00_model_states.pt")
    assert latest_complete_checkpoint(tmp_path, world_size=2) == good


def test_a_deepspeed_latest_tag_must_name_the_checkpoint(tmp_path):
    older = ds_checkpoint(tmp_path, 10, 2)
    ds_checkpoint(tmp_path, 20, 2)
    (tmp_path / "latest").write_text("iter_10.pth")  # a saver that writes `latest` had not committed 20
    assert latest_complete_checkpoint(tmp_path, world_size=2) == older
    (tmp_path / "latest").write_text("iter_20.pth")
    assert latest_complete_checkpoint(tmp_path, world_size=2) == tmp_path / "iter_20.pth"


def test_an_empty_deepspeed_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "iter_10.pth").mkdir()
    (tmp_path / "iter_10.pth" / "stray.pt").write_bytes(b"not a zip")
    assert latest_complete_checkpoint(tmp_path, world_size=1) is None


# --- the resume fingerprint -----------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "model.safetensors").write_bytes(b"\0" * 1024)
    data = tmp_path / "train.json"
    data.write_text("[]")
    config = tmp_path / "cfg.py"
    config.write_text(f"pretrained_model_name_or_path = {str(model)!r}\ndata_path = {str(data)!r}\n")
    return config, model


def test_the_fingerprint_changes_with_deepspeed_and_process_count(run, tmp_path):
    config, _ = run
    base = run_fingerprint(config)
    assert run_fingerprint(config) == base
    assert run_fingerprint(config, deepspeed="deepspeed_zero3") != base
    assert run_fingerprint(config, nproc_per_node=8) != base
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    first = run_fingerprint(config, deepspeed=str(ds))
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    assert run_fingerprint(config, deepspeed=str(ds)) != first


def test_the_fingerprint_sees_the_weights_of_a_path_model(run):
    config, model = run
    base = run_fingerprint(config)
    (model / "model.safetensors").write_bytes(b"\1" * 1024)  # same size, same name, other weights
    assert run_fingerprint(config) != base


def test_the_fingerprint_sees_a_big_shard_replaced(run, monkeypatch):
    """A shard too big to hash at every start is known by size and mtime (a re-download of an unpinned
    ModelScope revision writes new files)."""
    import zhufu.train.checkpoints as checkpoints

    config, model = run
    monkeypatch.setattr(checkpoints, "_HASH_WHOLE_BYTES", 100)
    base = run_fingerprint(config)
    st = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run_fingerprint(config) != base


def test_the_fingerprint_follows_a_linked_model(run, tmp_path):
    """The base_model rule links a `path` model's files; an edit at the source changes the fingerprint."""
    config, model = run
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in model.iterdir():
        (linked / f.name).symlink_to(f)
    config.write_text(config.read_text().replace(repr(str(model)), repr(str(linked))))
    base = run_fingerprint(config)
    (model / "model.safetensors").write_bytes(b"\2" * 1024)
    assert run_fingerprint(config) != base


# --- an empty or nearly empty training set --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    fixture = json.loads((ROOT / "tests" / "fixtures" / "dirty.json").read_text())
    rows = [{"conversation": r["conversation"]} for r in fixture if r["conversation"][0]["output"]]
    (root / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    r = run_cmd([sys.executable, "-m", "zhufu", "base-model", "--train", str(root / "train.json"), "-o",
                 str(root / "base")], ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "base", rows


@pytest.mark.slow
@pytest.mark.parametrize("kept", [0, 3])
def test_check_format_refuses_an_empty_or_nearly_empty_set(tmp_path, tokenizer, kept):
    base, rows = tokenizer
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows[:kept], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "check.json"
    r = run_cmd([sys.executable, "-m", "zhufu", "check-format", str(train), "--tokenizer", str(base), "-o",
                 str(out)], ROOT)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{kept} rows; training needs at least 16" in r.stderr and not out.exists()


@pytest.mark.slow
def test_check_format_passes_a_set_of_the_minimum_size(tmp_path, tokenizer):
    base, rows = tokenizer
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows[:16], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "check.json"
    r = run_cmd([sys.executable, "-m", "zhufu", "check-format", str(train), "--tokenizer", str(base), "-o",
                 str(out)], ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text())["samples"] == 16


def test_train_waits_for_the_format_check(tmp_path):
    project = copy_project(tmp_path / "p")
    r = run_cmd(
        ["snakemake", "-n", "--cores", "1", "--forceall", "results/train/work_dir/last_checkpoint"],
        project,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = [
        line.split()[0] for line in r.stdout.splitlines() if line.split()[:1] and line.split()[-1:] == ["1"]
    ]
    assert "check_format" in jobs and "train" in jobs, r.stdout[-3000:]
