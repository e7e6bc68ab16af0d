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
        "zhufu.teacher",
        "run the offline OpenAI-compatible teacher (a phrase bank, not an LLM)",
    ),
    "estimate": ("zhufu.generate", "print the calls, tokens and cost a config would spend, spending nothing"),
    "generate": ("zhufu.generate", "manufacture raw per-round JSON shards by calling the configured LLM"),
    "spend": (
        "zhufu.generate",
        "print the tokens and money spent per provider and model (the cache's ledger)",
    ),
    "import": ("zhufu.dataset", "turn an existing conversation-format JSON file into a raw shard"),
    "merge": ("zhufu.dataset", "merge raw shards into one validated list of records"),
    "clean": ("zhufu.dataset", "apply the cleaning rules: train.json plus a report of every change"),
    "card": ("zhufu.dataset", "write the dataset card for a cleaned training set"),
    "check-format": ("zhufu.dataset", "run train.json through XTuner's own dataset processing"),
    "figures": ("zhufu.figures", "draw the suitability heatmap, length histograms and cell counts"),
    "base-model": (
        "zhufu.base_model",
        "build the tiny offline model, or resolve/download the configured one",
    ),
    "render-config": ("zhufu.xtuner_config", "render the XTuner config for the configured training profile"),
    "train": ("zhufu.launcher", "run XTuner training (resumes from the last checkpoint)"),
    "pth-to-hf": ("zhufu.launcher", "convert an XTuner .pth checkpoint to a HF adapter"),
    "merge-model": ("zhufu.launcher", "merge a HF adapter into its base model"),
    "evaluate": ("zhufu.evaluate", "answer the evaluation inputs with the base and the tuned model"),
    "chat": ("zhufu.chat", "ask the tuned model for a blessing, once or interactively"),
    "serve": ("zhufu.serve", "serve a web demo of the tuned model on 127.0.0.1"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zhufu", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        fn = name.replace("-", "_")
        getattr(importlib.import_module(module), f"add_{fn}_arguments")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the parser of the command being run, so `zhufu merge` never imports torch.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        parser = argparse.ArgumentParser(prog="zhufu")
        parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
        sub = parser.add_subparsers(dest="command", required=True)
        module, help_ = COMMANDS[command]
        p = sub.add_parser(command, help=help_, description=help_)
        mod = importlib.import_module(module)
        fn = command.replace("-", "_")
        getattr(mod, f"add_{fn}_arguments")(p)
    else:
        parser = build_parser()
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
