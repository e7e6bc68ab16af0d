"""The resume helpers of training, without training: which checkpoints a work dir holds, which one is
complete, what last_checkpoint names, and the fingerprint that decides whether a restart is the same run."""

import logging
import zipfile

import pytest

from zhufu.errors import ModelError
from zhufu.train.checkpoints import checkpoints, last_checkpoint, latest_complete_checkpoint, run_fingerprint
from zhufu.train.xtuner_config import write_config


def complete(path):
    """A checkpoint as torch.save writes it: a zip archive, its central directory written last."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 64)
        zf.writestr("archive/version", b"3\n")
    return path


def truncated(path):
    """The same file cut short, as a kill -9 during torch.save leaves it."""
    data = complete(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoints_are_the_iter_files_in_iteration_order(tmp_path):
    for n in (100, 5, 20):
        complete(tmp_path / f"iter_{n}.pth")
    for noise in ("iter_7.pth.tmp", "iter_x.pth", "iter_3.pt", "best_iter_3.pth", "last_checkpoint"):
        (tmp_path / noise).write_text("not a checkpoint")
    assert [p.name for p in checkpoints(tmp_path)] == ["iter_5.pth", "iter_20.pth", "iter_100.pth"]


def test_no_work_dir_means_no_checkpoints(tmp_path):
    assert checkpoints(tmp_path / "missing") == []
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_the_latest_complete_checkpoint_skips_one_cut_short(tmp_path, caplog):
    complete(tmp_path / "iter_10.pth")
    truncated(tmp_path / "iter_20.pth")
    with caplog.at_level(logging.WARNING):
        assert latest_complete_checkpoint(tmp_path) == tmp_path / "iter_10.pth"
    assert "ignoring incomplete checkpoint" in caplog.text and "iter_20.pth" in caplog.text


def test_an_empty_file_or_empty_archive_is_incomplete(tmp_path):
    (tmp_path / "iter_10.pth").write_bytes(b"")
    zipfile.ZipFile(tmp_path / "iter_20.pth", "w").close()  # a valid zip with nothing in it
    assert latest_complete_checkpoint(tmp_path) is None


def test_a_deepspeed_checkpoint_directory_is_complete_once_rank_0_wrote_its_states(tmp_path):
    """mmengine saves DeepSpeed checkpoints as work_dir/iter_N.pth/ holding each rank's states (tag = the
    folder name, no `latest` file); one killed before writing them is skipped for the one before."""
    done = tmp_path / "iter_30.pth"
    done.mkdir()
    complete(done / "mp_rank_00_model_states.pt")
    complete(done / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (tmp_path / "iter_40.pth").mkdir()  # killed before any file
    assert latest_complete_checkpoint(tmp_path, world_size=1) == done
    assert latest_complete_checkpoint(tmp_path, world_size=2) is None  # rank 1's states are missing


# ------------------------------------------------------------------------------------------ last_checkpoint


def test_last_checkpoint_follows_the_marker(tmp_path):
    ckpt = complete(tmp_path / "iter_20.pth")
    (tmp_path / "last_checkpoint").write_text(f"{ckpt}\n")
    assert last_checkpoint(tmp_path) == ckpt


def test_a_relative_marker_is_read_inside_the_work_dir(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    wd.mkdir()
    ckpt = complete(wd / "iter_20.pth")
    (wd / "last_checkpoint").write_text("some/other/work_dir/iter_20.pth")
    monkeypatch.chdir(tmp_path)  # read in the work dir, not in the current directory
    assert last_checkpoint(wd) == ckpt


def test_no_marker_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"last_checkpoint does not exist; has training finished in"):
        last_checkpoint(tmp_path)


def test_a_marker_naming_a_missing_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_99.pth"))
    with pytest.raises(ModelError, match=r"names .*iter_99\.pth, which does not exist"):
        last_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------ fingerprint


@pytest.fixture
def run_files(tmp_path):
    """A rendered XTuner config (the real template) with its data file and base model directory."""
    data = tmp_path / "train.json"
    data.write_text('[{"conversation": [{"system": "S", "input": "祝姐姐生日快乐", "output": "生日快乐"}]}]')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "zhufu_model.json").write_text('{"source": "tiny", "seed": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    config = write_config(
        tmp_path / "xtuner_config.py", profile="cpu-tiny", overrides=None, model_path=model, data_path=data
    )
    return config, data, model


def test_the_fingerprint_is_stable(run_files):
    config = run_files[0]
    first = run_fingerprint(config)
    assert len(first) == 16 and int(first, 16) >= 0
    assert run_fingerprint(config) == first


def test_the_fingerprint_changes_with_the_config(run_files, tmp_path):
    config, data, model = run_files
    other = write_config(
        tmp_path / "other.py", profile="cpu-tiny", overrides={"lr": 1e-3}, model_path=model, data_path=data
    )
    assert run_fingerprint(other) != run_fingerprint(config)


def test_the_fingerprint_changes_with_the_data_at_the_same_path(run_files):
    config, data, _ = run_files
    before = run_fingerprint(config)
    data.write_text(data.read_text().replace("生日快乐", "生日快乐呀"))
    assert run_fingerprint(config) != before


@pytest.mark.parametrize("name", ["config.json", "zhufu_model.json"])
def test_the_fingerprint_changes_with_the_base_models_identity(run_files, name):
    config, _, model = run_files
    before = run_fingerprint(config)
    (model / name).write_text((model / name).read_text().replace("}", ', "changed": true}'))
    assert run_fingerprint(config) != before


def test_the_fingerprint_changes_when_the_weights_change(run_files):
    """A `path` model edited in place, or an unpinned ModelScope revision that moved, is another run."""
    config, _, model = run_files
    before = run_fingerprint(config)
    (model / "model.safetensors").write_bytes(b"other weights")
    assert run_fingerprint(config) != before
