"""Render the XTuner config of a training profile from one jinja2 template.

The template (zhufu/train/templates/xtuner_config.py.j2) follows XTuner's own configs part by part, so a user
who knows XTuner reads it at once. Every value is a Python literal written with `repr`, because mmengine
parses the file lazily and cannot evaluate calls. A value that cannot be written as a literal is refused
(ConfigError), and the few names written bare (the profile name, `PROMPT_TEMPLATE.<name>`, dtypes) are
checked by zhufu.train.profiles first: nothing from config.yaml reaches the file as code.
"""

from __future__ import annotations

import keyword
import math
import os
from pathlib import Path
from typing import Any

import jinja2

from zhufu import __version__
from zhufu.config import load_config
from zhufu.errors import ConfigError
from zhufu.io import write_text
from zhufu.tianji import TIANJI_EVALUATION_INPUTS, TIANJI_SYSTEM
from zhufu.train.profiles import (
    PROFILES,
    check_model_matches,
    resolve_profile,
    training_overrides,
    warmup_iterations,
)

TEMPLATE = "xtuner_config.py.j2"


def _literal(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"training setting {value!r} is not a finite number")
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v) for v in value)
        return f"({items}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{items}]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k):
                raise ConfigError(
                    f"training setting key {str(k)[:60]!r} is not a Python name (letters, digits, _), so "
                    "it cannot be written into the config"
                )
        return "dict(" + ", ".join(f"{k}={_literal(v)}" for k, v in value.items()) + ")"
    raise ConfigError(
        f"training setting {value!r} ({type(value).__name__}) cannot be written into the config"
    )


def _environment():
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("zhufu.train", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["py"] = _literal
    env.filters["tuple"] = tuple
    return env


def render_config(
    profile: dict[str, Any],
    *,
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    system: str = TIANJI_SYSTEM,
    evaluation_inputs: list[str] | None = None,
) -> str:
    """The text of the XTuner config for a resolved profile (see zhufu.train.profiles.resolve_profile)."""
    warmup_iters = (
        warmup_iterations(profile["warmup_ratio"], profile["max_iters"]) if profile["max_iters"] else None
    )
    text = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            p=profile,
            model_path=str(Path(model_path).absolute()),
            data_path=str(Path(data_path).absolute()),
            system=system,
            evaluation_inputs=list(evaluation_inputs or TIANJI_EVALUATION_INPUTS),
            warmup_iters=warmup_iters,
            zhufu_version=__version__,
        )
    )
    compile(text, "xtuner_config.py", "exec")
    return text


def write_config(
    out: str | os.PathLike,
    *,
    profile: str,
    overrides: dict[str, Any] | None,
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    system: str = TIANJI_SYSTEM,
    evaluation_inputs: list[str] | None = None,
) -> Path:
    resolved = resolve_profile(profile, overrides)
    write_text(
        out,
        render_config(
            resolved,
            model_path=model_path,
            data_path=data_path,
            system=system,
            evaluation_inputs=evaluation_inputs,
        ),
    )
    return Path(out)


def training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved profile for a validated Zhufu config (used by the train rule's params); ConfigError when
    it does not fit the configured tiny model."""
    profile = resolve_profile(config["train"]["profile"], config["train"].get("overrides"))
    check_model_matches(profile, config.get("model", {}))
    return profile


def add_render_config_arguments(parser) -> None:
    parser.add_argument("--config", help="config file (default: the project's config.yaml)")
    parser.add_argument("--profile", help="training profile (default: config train.profile)")
    parser.add_argument("--model", default="results/base_model", help="base model directory")
    parser.add_argument("--data", default="results/data/train.json", help="training set (train.json)")
    parser.add_argument("-o", "--output", default="results/train/xtuner_config.py", help="config to write")
    parser.add_argument("--list", action="store_true", help="list the profiles and exit")


def run_render_config(args) -> int:
    if args.list:
        for name, profile in PROFILES.items():
            print(f"{name}: {profile['description']}")
        return 0
    config = load_config(args.config)
    out = write_config(
        args.output,
        profile=args.profile or config["train"]["profile"],
        overrides=training_overrides(config),
        model_path=args.model,
        data_path=args.data,
        system=config["system_prompt"],
        evaluation_inputs=config["train"]["eval_inputs"],
    )
    print(out)
    return 0
