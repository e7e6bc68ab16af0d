"""Load and validate a Zhufu config against schemas/config.schema.yaml, filling in its defaults.

Snakemake's `validate()` reports a schema dump and a traceback; this module reports one line that names
the key and what was expected, which is what both the workflow (rules/common.smk) and the CLI print.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from zhufu.errors import ConfigError, looks_like_key
from zhufu.io import read_text

# The workflow's checkout, when the package runs from one: its config.yaml is the CLI's default config.
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.yaml"
# Package data: the top-level schemas/ and resources/ folders are installed as zhufu.schemas and
# zhufu.resources (pyproject.toml's package-dir), so an installed zhufu reads them without a checkout.
SCHEMAS = files("zhufu.schemas")
RESOURCES = files("zhufu.resources")

# The config keys that change what a raw shard contains (rules/generate.smk passes exactly these, with
# `styles` narrowed to the shard's style).
SHARD_KEYS = (
    "seed",
    "system_prompt",
    "teacher_system_prompt",
    "grid",
    "prompt_template",
    "injections",
    "input_templates",
    "trigger_separator",
    "provider",
)
# The config keys that shape the data: the shards' keys, all the styles, the rounds, the cleaning rules and the
# general data mixed in (data.mix).
# Training and evaluation keys are left out, so editing them does not rerun clean (and so retrain) just to
# write a new hash into the dataset card.
DATA_KEYS = (*SHARD_KEYS, "rounds", "styles", "clean", "data")

# Identity vs operation of the `provider` block. Identity is who answers and what is asked (kind, model,
# endpoint, sampling, the name recorded in each record): it shapes the data, so it is in the generate rule's
# params and in the data hash. Operation is how the answers are fetched (rates, concurrency, retries,
# timeouts, price, budget, batch or direct calls, which env var holds the key): changing it reruns nothing, so the generate script
# reads it from the workflow's config at run time (with_operation below), never from params.
# Every key of the schema's provider block is in exactly one of the two (tests/workflow/test_reruns.py checks).
PROVIDER_IDENTITY = ("kind", "model", "base_url", "name", "temperature", "top_p", "max_tokens", "model_path")
PROVIDER_OPERATION = (
    "api_key_env",
    "timeout_s",
    "concurrency",
    "rpm",
    "tpm",
    "max_attempts",
    "backoff_s",
    "backoff_max_s",
    "retry_after_max_s",
    "max_failed_share",
    "price",
    "budget",
    "launch",
    "launch_timeout_s",
    "gpus",
    "batch",
    "batch_options",
)


def provider_identity_keys(provider: dict[str, Any]) -> dict[str, Any]:
    """The identity part of a provider block (see PROVIDER_IDENTITY)."""
    return {k: provider[k] for k in PROVIDER_IDENTITY if k in provider}


def provider_operation(provider: dict[str, Any]) -> dict[str, Any]:
    """The operation part of a provider block (see PROVIDER_OPERATION)."""
    return {k: v for k, v in provider.items() if k not in PROVIDER_IDENTITY}


def data_view(config: dict[str, Any], keys: tuple[str, ...] = DATA_KEYS) -> dict[str, Any]:
    """`keys` of config, with the provider block narrowed to its identity: what params and hashes see."""
    view = {k: config.get(k) for k in keys}
    if isinstance(view.get("provider"), dict):
        view["provider"] = provider_identity_keys(view["provider"])
    return view


def shard_config(config: dict[str, Any], style: str) -> dict[str, Any]:
    """The part of `config` one shard's data depends on, with `styles` narrowed to that style and the
    provider block to its identity (the generate rule's params: a rate limit or budget reruns nothing)."""
    sub = {k: v for k, v in data_view(config, SHARD_KEYS).items() if k in config}
    sub["styles"] = {style: config["styles"][style]}
    return sub


def shards_config(config: dict[str, Any]) -> dict[str, Any]:
    """shard_config with every style: the params of the one generate job of a local teacher (kind local)."""
    sub = {k: v for k, v in data_view(config, SHARD_KEYS).items() if k in config}
    sub["styles"] = dict(config["styles"])
    return sub


def with_operation(shard: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`shard` (a shard_config) with the operation settings of `config`'s provider block put back: the
    generate script takes them from the workflow's config at run time, outside params, so Snakemake does not
    rerun a shard when only a rate limit, the concurrency, a timeout, the price or the budget changed."""
    return {**shard, "provider": {**provider_operation(config["provider"]), **shard["provider"]}}


def judge_provider(config: dict) -> dict:
    """`evaluate.judge.provider` over `provider:`, at temperature 0 and the judge's max_tokens."""
    judge = config["evaluate"]["judge"]
    return {
        **config["provider"],
        "temperature": 0.0,
        "top_p": None,
        "max_tokens": judge["max_tokens"],
        **judge["provider"],
    }


def judge_view(config: dict) -> dict:
    """What shapes the verdicts: the judge provider's identity, the rubric's settings, the styles, the
    summary's seed and resamples (the judge rule's params). Rates, budget, max_cost and the key's env var
    are left out: changing them reruns nothing."""
    judge = config["evaluate"]["judge"]
    return {
        "provider": provider_identity_keys(judge_provider(config)),
        "pass_score": judge["pass_score"],
        "styles": config["styles"],
        "summary": {k: config["evaluate"][k] for k in ("seed", "bootstrap")},
    }


def suitability_input(config: dict) -> str | list:
    """The suitability matrix as a rule's input: its path, or no file when the grid has none."""
    return config["grid"]["suitability"] or []


def off_task_input(config: dict) -> str | list:
    """The off-task requests file as an input of evaluate (none when evaluate.off_task is null)."""
    return config["evaluate"]["off_task"] or []


def decisions_input(config: dict) -> str | list:
    """The review decisions file as clean's input, once it exists: a new decision reruns clean."""
    path = config["review"]["decisions"]
    return path if Path(path).exists() else []


def cache_path(config: dict) -> str:
    """The answer cache's path (outside results/; generate, estimate and the judge share it)."""
    return config["cache"]


def import_specs(config: dict) -> dict[str, dict]:
    """clean.imports by name (the file's stem): {path, rule_set}, rule_set None for a bare path."""
    return {
        Path(i if isinstance(i, str) else i["path"]).stem: (
            {"path": i, "rule_set": None} if isinstance(i, str) else {"rule_set": None, **i}
        )
        for i in config["clean"]["imports"]
    }


def import_view(config: dict, rule_set: str | None) -> dict:
    """What parsing one import depends on: the grid, the styles, the system prompt and only its own rule set,
    so editing another set or a cleaning threshold reruns no import (the import_data rule's params)."""
    return {
        **{k: config[k] for k in ("grid", "styles", "system_prompt")},
        "clean": {"rule_sets": {k: v for k, v in config["clean"]["rule_sets"].items() if k == rule_set}},
    }


def data_config_hash(config: dict) -> str:
    """Hash of the config keys that shape the data, the provider block narrowed to its identity (changing a
    rate limit or the budget changes neither the data nor this hash)."""
    blob = json.dumps(data_view(config), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def provenance_from_config(config: dict) -> dict:
    """Where the data came from, for the dataset card: provider, model, seed and the data config's hash."""
    return {
        "provider": config["provider"]["kind"],
        "model": config["provider"]["model"],
        "seed": config["seed"],
        "config_hash": data_config_hash(config),
    }


def clean_view(config: dict) -> dict:
    """What cleaning depends on (the clean rule's params): the rules, the styles' bands, the system prompt,
    whether a suitability matrix is used, and the card's provenance (its hash covers DATA_KEYS only, so a
    training or evaluation key reruns no clean)."""
    return {
        "rules": config["clean"],
        "styles": config["styles"],
        "system_prompt": config["system_prompt"],
        "use_suitability": bool(config["grid"]["suitability"]),
        "provenance": provenance_from_config(config),
        # the general rows mixed in (zhufu.data.mix) and the seed that draws them
        "mix": config["data"]["mix"],
        "seed": config["seed"],
    }


def figures_view(config: dict) -> dict:
    """What the dataset's figures draw besides the report: the grid's axes and the styles' bands."""
    return {
        "recipients": config["grid"]["recipients"],
        "scenes": config["grid"]["scenes"],
        "styles": config["styles"],
    }


# The config keys the evaluation reads: what is asked (grid, held-out pairs, styles, input templates, the
# system prompt), how answers are scored (the cleaner's rules) and the evaluate block. The provider and the
# training keys are left out: the trained model is an input.
EVALUATE_KEYS = (
    "seed",
    "grid",
    "styles",
    "input_templates",
    "trigger_separator",
    "system_prompt",
    "clean",
    "evaluate",
)


def evaluate_view(config: dict) -> dict:
    """The evaluate rule's params: EVALUATE_KEYS of config."""
    return {k: config[k] for k in EVALUATE_KEYS}


def estimate_view(config: dict) -> dict:
    """The estimate rule's params: what shapes every shard's prompts (SHARD_KEYS, all styles, the rounds),
    and the shards, style × round. The provider block is whole: its price and budget are in the estimate."""
    return {
        "config": {k: config[k] for k in SHARD_KEYS + ("styles", "rounds")},
        "shards": [(s, r) for s in config["styles"] for r in range(config["rounds"])],
    }


def package_file(folder, *parts: str) -> Path:
    """A file of the package data as a path (a regular install or a checkout; zip imports are not supported)."""
    return Path(str(folder.joinpath(*parts)))


@cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMAS.joinpath("config.schema.yaml").read_text(encoding="utf-8"))


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def api_key_env_problem(name: object) -> str | None:
    """Why a provider.api_key_env value is not the name of an environment variable (None if it is one).

    The value is never part of the answer: a key pasted here by mistake must not reach a terminal or log.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return "must be the NAME of an environment variable (letters, digits, _), e.g. DEEPSEEK_API_KEY"
    long_token = len(name) >= 20 and any(c.isdigit() for c in name) and "_" not in name
    if looks_like_key(name) or long_token:
        return (
            "looks like an API key, not the name of an environment variable; put the key in the "
            "environment (export DEEPSEEK_API_KEY=...) and write its name here (the value is not shown)"
        )
    return None


def _describe(error: jsonschema.ValidationError) -> str:
    if list(error.absolute_path)[-1:] == ["api_key_env"]:
        return f"{_key_path(error)}: {api_key_env_problem(error.instance) or error.message}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = _key_path(error)
        keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {keys}{hint}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return (
            f"{_key_path(error)}: expected {expected}, got {type(error.instance).__name__} {error.instance!r}"
        )
    if error.validator == "required":
        return f"{_key_path(error)}: {error.message}"
    return f"{_key_path(error)}: {error.message}"


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults in place and validate. Raise ConfigError naming the first bad key."""
    validator = _Validator(load_schema())
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        raise ConfigError(f"{source}: {_describe(errors[0])}")
    _check_semantics(config, source)
    return config


# The fields each template of the config may use (zhufu.grid fills them with str.format).
TEMPLATE_FIELDS = {
    "prompt_template": ("max_chars", "style_prompt", "recipient", "scene", "injection"),
    "input_templates": ("recipient", "scene"),
    "styles.*.prompt": ("examples",),
}


def check_template(text: str, fields: tuple[str, ...], where: str) -> None:
    """A str.format template that uses only `fields` by name; ConfigError otherwise, naming `where`."""
    allowed = ", ".join("{" + f + "}" for f in fields)
    hint = f"use only {allowed}, and write a literal brace doubled ({{{{ or }}}})"
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ConfigError(f"{where}: not a valid template ({e}); {hint}") from None
    for _, name, spec, _ in parsed:
        if name is not None and name not in fields:
            shown = "{" + name[:40] + "}" if name else "{}"
            raise ConfigError(f"{where}: unknown field {shown}; {hint}")
        if name is not None and spec and "{" in spec:
            raise ConfigError(f"{where}: a field inside the format of {{{name}}}; {hint}")
    try:
        text.format(**dict.fromkeys(fields, ""))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ConfigError(f"{where}: not a valid template ({e}); {hint}") from None


def _check_semantics(config: dict[str, Any], source: str) -> None:
    check_template(
        config["prompt_template"], TEMPLATE_FIELDS["prompt_template"], f"{source}: prompt_template"
    )
    for i, template in enumerate(config["input_templates"]):
        check_template(template, TEMPLATE_FIELDS["input_templates"], f"{source}: input_templates[{i}]")
    for name, style in config["styles"].items():
        if isinstance(style.get("prompt"), str):
            check_template(
                style["prompt"], TEMPLATE_FIELDS["styles.*.prompt"], f"{source}: styles.{name}.prompt"
            )
        if style["min_chars"] > style["max_chars"]:
            raise ConfigError(
                f"{source}: styles.{name}: min_chars ({style['min_chars']}) > max_chars ({style['max_chars']})"
            )
        if style.get("few_shot_k", 0) > len(style.get("examples", [])):
            raise ConfigError(
                f"{source}: styles.{name}.few_shot_k is {style['few_shot_k']} but only "
                f"{len(style.get('examples', []))} examples are given"
            )
        if "/" in name or name.startswith("."):
            raise ConfigError(
                f"{source}: styles.{name}: a style name is a directory name; no '/' or leading '.'"
            )
    provider = config["provider"]
    if problem := api_key_env_problem(provider.get("api_key_env")):
        raise ConfigError(f"{source}: provider.api_key_env {problem}")
    if provider["kind"] != "offline" and not provider.get("base_url") and provider["kind"] == "openai":
        raise ConfigError(
            f"{source}: provider.base_url is required for kind 'openai' (e.g. https://api.deepseek.com/v1)"
        )
    if provider["kind"] == "local" and provider.get("batch"):
        raise ConfigError(
            f"{source}: provider.batch is for a provider's Batch API; a local teacher (kind 'local') has none, "
            "and batches its requests itself: set provider.batch: false"
        )
    if provider["kind"] == "local" and not provider.get("model_path"):
        raise ConfigError(
            f"{source}: provider.model_path is required for kind 'local' (the model directory the workflow "
            "serves with provider.launch, e.g. another run's results/model/merged)"
        )
    _check_mix(config, source)
    model = config.get("model", {})
    if model.get("source") == "path" and not model.get("path"):
        raise ConfigError(f"{source}: model.path is required when model.source is 'path'")
    if model.get("source") == "modelscope" and not model.get("modelscope_id"):
        raise ConfigError(f"{source}: model.modelscope_id is required when model.source is 'modelscope'")


def _check_mix(config: dict[str, Any], source: str) -> None:
    """data.mix: each entry a share or a count (not both), of a rule set that exists; shares below 1."""
    sets = config["clean"].get("rule_sets") or {}
    for i, entry in enumerate(config["data"]["mix"]):
        where = f"{source}: data.mix[{i}]"
        if (entry.get("share") is None) == (entry.get("count") is None):
            raise ConfigError(f"{where}: give either `share` (0 ≤ share < 1 of train.json) or `count` (rows)")
        if entry["rule_set"] not in sets:
            raise ConfigError(
                f"{where}.rule_set: no rule set {entry['rule_set']!r} under clean.rule_sets "
                f"(known: {', '.join(sorted(sets))})"
            )
    total = sum(e["share"] for e in config["data"]["mix"] if e.get("share") is not None)
    if total >= 1:
        raise ConfigError(f"{source}: data.mix: the shares add up to {total:g}; they must stay below 1")


def _read_yaml(p: Path) -> dict[str, Any]:
    text = read_text(p, error=ConfigError, what="config file")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level")
    return config


def load_config(*overlays: str | Path | None) -> dict[str, Any]:
    """The config the workflow sees: the project's config.yaml with each overlay merged over it in order.

    This is exactly `snakemake --configfile A B …` (Snakemake's own `update_config`: mappings merge key by
    key, anything else replaces), so `zhufu estimate --configfile A B` and `snakemake --configfile A B`
    ask for the same prompts. `None` entries are skipped; no overlay gives config.yaml alone.
    """
    from snakemake.utils import update_config  # the merge Snakemake applies to --configfile

    paths = [Path(p) for p in overlays if p]
    config = _read_yaml(DEFAULT_CONFIG)
    for p in paths:
        if p.resolve() != DEFAULT_CONFIG.resolve():
            update_config(config, _read_yaml(p))
    return validate_config(config, ", ".join(map(str, paths)) or str(DEFAULT_CONFIG))


def add_configfile_argument(parser) -> None:
    """`--configfile A B …` as Snakemake takes it (`--config FILE…` is kept as an alias)."""
    parser.add_argument(
        "--configfile",
        "--config",
        dest="configfiles",
        nargs="+",
        metavar="FILE",
        default=[],
        help="config files merged over the project's config.yaml, in order, as `snakemake --configfile` does",
    )
