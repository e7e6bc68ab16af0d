"""`zhufu <stage>`: every workflow stage as a command a user can run by hand on their own files.

Each command lives in its stage module as a pair of functions, `add_<cmd>_arguments(parser)` and
`run_<cmd>(args) -> int | None`, imported only when that command runs (torch is slow to import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from zhufu.errors import ZhufuError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve-teacher": (
        "zhufu.teacher.server",
        "run the offline OpenAI-compatible teacher (a phrase bank, not an LLM)",
    ),
    "estimate": (
        "zhufu.generate.estimate",
        "print the calls, tokens and cost a config would spend, spending nothing",
    ),
    "generate": ("zhufu.generate.run", "manufacture raw per-round JSON shards by calling the configured LLM"),
    "spend": (
        "zhufu.generate.estimate",
        "print the tokens and money spent per provider and model (the cache's ledger)",
    ),
    "import": ("zhufu.data.importing", "turn an existing conversation-format JSON file into a raw shard"),
    "merge": ("zhufu.data.merge", "merge raw shards into one validated list of records"),
    "clean": ("zhufu.data.clean", "apply the cleaning rules: train.json plus a report of every change"),
    "card": ("zhufu.data.card", "write the dataset card for a cleaned training set"),
    "check-format": ("zhufu.train.format_check", "run train.json through XTuner's own dataset processing"),
    "figures": ("zhufu.data.figures", "draw the suitability heatmap, length histograms and cell counts"),
    "base-model": (
        "zhufu.train.base_model",
        "build the tiny offline model, or resolve/download the configured one",
    ),
    "render-config": (
        "zhufu.train.xtuner_config",
        "render the XTuner config for the configured training profile",
    ),
    "train": ("zhufu.train.run", "run XTuner training (resumes from the last checkpoint)"),
    "pth-to-hf": ("zhufu.train.export", "convert an XTuner .pth checkpoint to a HF adapter"),
    "merge-model": ("zhufu.train.export", "merge a HF adapter into its base model"),
    "evaluate": ("zhufu.model.evaluate", "answer the evaluation inputs with the base and the tuned model"),
    "judge": (
        "zhufu.model.judge",
        "score the evaluation's answers with an LLM judge (cached; --estimate spends nothing)",
    ),
    "chat": ("zhufu.model.chat", "ask the tuned model for a blessing, once or interactively"),
    "serve": ("zhufu.model.serve", "serve a web demo of the tuned model on 127.0.0.1"),
    "serve-model": (
        "zhufu.model.api",
        "serve a Hugging Face model directory behind an OpenAI-compatible API (batched, 127.0.0.1)",
    ),
    "review": (
        "zhufu.model.review",
        "review the cleaned records in a local web page; decisions feed `clean`",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command `only` (so `zhufu merge` never imports torch)."""
    parser = argparse.ArgumentParser(prog="zhufu", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else COMMANDS:
        module, help_ = COMMANDS[name]
        p = sub.add_parser(name, help=help_, description=help_)
        fn = name.replace("-", "_")
        getattr(importlib.import_module(module), f"add_{fn}_arguments")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    fn = args.command.replace("-", "_")
    try:
        rc = getattr(importlib.import_module(COMMANDS[args.command][0]), f"run_{fn}")(args)
    except ZhufuError as e:
        print(f"zhufu {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"zhufu {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
