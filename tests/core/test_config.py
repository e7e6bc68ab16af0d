"""The config is validated before anything runs: one line naming the key, non-zero exit, no traceback."""

import copy

import pytest
import yaml
from helpers import BIN, ROOT, run_cmd

from zhufu.config import load_config, validate_config
from zhufu.errors import ConfigError


@pytest.fixture(scope="module")
def base():
    with open(ROOT / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid_and_gets_defaults():
    config = load_config()
    assert config["provider"]["kind"] == "offline"
    assert config["provider"]["api_key_env"] is None
    assert config["grid"]["suitability"] == "resources/suitability.csv"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(sed=1), "unknown key sed"),
        (lambda c: c["provider"].update(kind="openia"), "provider.kind"),
        (lambda c: c.update(rounds="two"), "rounds: expected integer, got str 'two'"),
        (lambda c: c["styles"]["小红书"].update(max_chars="50"), "styles.小红书.max_chars: expected integer"),
        (lambda c: c["provider"].update(temprature=1), "unknown key provider.temprature"),
        (lambda c: c["styles"]["正常"].update(min_chars=99), "styles.正常: min_chars (99) > max_chars (30)"),
        (lambda c: c["grid"].update(recipients=[]), "grid.recipients"),
        (lambda c: c["provider"].update(kind="local"), "provider.model_path is required for kind 'local'"),
        (
            lambda c: c["provider"].update(kind="local", model_path="m", batch=True),
            "provider.batch is for a provider's Batch API",
        ),
    ],
)
def test_bad_config_names_the_key(base, mutate, expected):
    config = copy.deepcopy(base)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate_config(config, "my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_snakemake_rejects_bad_config_before_any_job(project):
    config = yaml.safe_load((project / "config.yaml").read_text(encoding="utf-8"))
    config["provider"]["temprature"] = 0.7
    config["rounds"] = "two"
    (project / "bad.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    result = run_cmd(
        [str(BIN / "snakemake"), "--cores", "1", "--configfile", "bad.yaml"], cwd=project, timeout=120
    )
    assert result.returncode != 0
    err_lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert len(err_lines) == 1, result.stderr
    assert "unknown key provider.temprature" in err_lines[0] or "rounds" in err_lines[0]
    assert "Traceback" not in result.stderr
    assert not (project / "results").exists()


def test_cli_bad_config_is_one_line(project):
    (project / "bad.yaml").write_text("seed: 1\nrounds: many\n", encoding="utf-8")
    result = run_cmd([str(BIN / "zhufu"), "estimate", "--configfile", "bad.yaml"], cwd=project, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "bad.yaml" in result.stderr and "rounds: expected integer" in result.stderr


def test_atomic_writes_leave_no_temp_file_and_respect_umask(tmp_path):
    import os
    import stat

    from zhufu.io import atomic_path, write_json

    target = tmp_path / "out" / "x.json"
    write_json(target, {"a": "祝"})
    assert target.read_text(encoding="utf-8").strip() == '{\n  "a": "祝"\n}'
    assert list(target.parent.iterdir()) == [target]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi", encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert list(target.parent.iterdir()) == [target]  # the failed write left the old file and no temp
    assert '"a"' in target.read_text(encoding="utf-8")


def test_schema_defaults_match_the_default_config():
    """A config that leaves out prompt_template or evaluate.inputs gets exactly the default run's."""
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text(encoding="utf-8"))
    config = load_config()
    assert schema["properties"]["prompt_template"]["default"] == config["prompt_template"]
    evaluate_inputs = schema["properties"]["evaluate"]["properties"]["inputs"]["default"]
    assert evaluate_inputs == config["evaluate"]["inputs"]


def test_training_eval_inputs_default_to_tianjis_six():
    """train.eval_inputs (the training-time hook's list) is Tianji's six, whatever evaluate.inputs says."""
    from zhufu.tianji import TIANJI_EVALUATION_INPUTS

    config = load_config()
    config_with_more = {**config, "evaluate": {"inputs": ["祝爷爷中秋节快乐"]}}
    del config_with_more["train"]
    from zhufu.config import validate_config

    validate_config(config_with_more)
    assert config["train"]["eval_inputs"] == list(TIANJI_EVALUATION_INPUTS)
    assert config_with_more["train"]["eval_inputs"] == list(TIANJI_EVALUATION_INPUTS)
    assert len(TIANJI_EVALUATION_INPUTS) == 6


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate_over_the_default(name, base):
    """As `snakemake --configfile configs/NAME` uses them: merged over config.yaml."""
    from snakemake.utils import update_config

    config = copy.deepcopy(base)
    update_config(config, yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8")))
    assert validate_config(config, name)["grid"]["scenes"]


def test_the_data_hash_sees_the_provider_identity_only():
    """The card's config hash (a param of clean) ignores how the data is fetched, not what it is."""
    import copy

    from zhufu.config import data_config_hash

    config = load_config()
    fetched_otherwise = copy.deepcopy(config)
    fetched_otherwise["provider"].update(rpm=600, concurrency=2, budget=5.0, timeout_s=30, api_key_env="K")
    other_sampling = copy.deepcopy(config)
    other_sampling["provider"]["temperature"] = 0.5
    assert data_config_hash(fetched_otherwise) == data_config_hash(config)
    assert data_config_hash(other_sampling) != data_config_hash(config)
