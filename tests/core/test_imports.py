"""The import graph is the stage graph: the allowed import directions of docs/architecture.md, read from
the package's own syntax trees, and each rule's code inputs (what an edit reruns) as rules/common.smk
computes them."""

from __future__ import annotations

import ast
import re

import pytest
from helpers import ROOT

from zhufu.codegraph import code_inputs, imported_modules

PACKAGE = ROOT / "zhufu"

# docs/architecture.md, "Which family may import which", written out here (not taken from the code).
# `entry` is the CLI (zhufu/cli.py, zhufu/__main__.py): it may import every family, and nothing imports it.
ALLOWED = {
    "core": {"core"},
    "teacher": {"core", "teacher"},
    "generate": {"core", "generate", "teacher"},
    "data": {"core", "data"},
    "train": {"core", "train"},
    "model": {"core", "model", "data", "train", "generate", "teacher"},
    "entry": {"core", "entry", "teacher", "generate", "data", "train", "model"},
}

# The families of each rule's code inputs: a data rule lists no zhufu/model/* or zhufu/train/* file, and
# so on. Written out, so that a new import that widens a rule's inputs fails here until it is meant.
RULE_FAMILIES = {
    "generate": {"generate", "teacher"},
    "generate_local": {"generate", "teacher"},  # a local teacher's one job (rules/generate.smk)
    "estimate": {"generate", "teacher"},
    "import_data": {"data"},
    "merge": {"data"},
    "clean": {"data"},
    "figures": {"data"},
    "base_model": {"train"},
    "render_config": {"train"},
    "check_format": {"train"},
    "train": {"train"},
    "loss_figure": {"train"},
    "pth_to_hf": {"train"},
    "merge_model": {"train"},
    "evaluate": {"model", "data", "train"},
    "judge": {"model", "data", "generate", "teacher"},
}
RULE_FILE_FAMILY = {
    "generate.smk": "generate",
    "dataset.smk": "data",
    "train.smk": "train",
    "export.smk": "train",
    "evaluate.smk": "model",
}


def family(path) -> str:
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:
        return "entry" if rel.name in ("cli.py", "__main__.py") else "core"
    return rel.parts[0]


def module_file(name: str):
    """zhufu.a.b -> zhufu/a/b.py or zhufu/a/b/__init__.py (None when it is not a module: an imported name)."""
    base = PACKAGE.joinpath(*name.split(".")[1:])
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def ast_imports(path) -> set:
    """Every zhufu module file `path` imports, by Python's parser, with the packages each import runs."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "zhufu"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "zhufu":
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # zhufu.a.b runs zhufu/a/__init__.py first
            if f := module_file(".".join(parts[:i])):
                found.add(f)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_the_package_has_every_family():
    assert {family(p) for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_allowed_directions(path):
    here = family(path)
    wrong = sorted(
        f"{f.relative_to(ROOT)} ({family(f)})" for f in ast_imports(path) if family(f) not in ALLOWED[here]
    )
    assert not wrong, (
        f"{path.relative_to(ROOT)} ({here}) imports {', '.join(wrong)}; {here} may import only "
        f"{', '.join(sorted(ALLOWED[here]))} (docs/architecture.md)"
    )


@pytest.mark.parametrize("path", MODULES + SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_workflows_import_scan_agrees_with_pythons_parser(path):
    assert set(imported_modules(path, PACKAGE)) == ast_imports(path)


def rule_scripts() -> dict[str, tuple[str, str, str | None]]:
    """rule -> (rule file, its script, the script its code() names), read from rules/*.smk."""
    found = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for m in re.finditer(
            r"^[ ]*rule (\w+):\n(.*?)(?=^[ ]*rule |\Z)", smk.read_text(encoding="utf-8"), re.M | re.S
        ):
            script = re.search(r'script:\s*\n\s*"\.\./(scripts/\w+\.py)"', m[2])
            code = re.search(r'code\("(scripts/\w+\.py)"\)', m[2])
            if script:
                found[m[1]] = (smk.name, script[1], code[1] if code else None)
    return found


def test_every_rule_with_a_script_is_listed():
    assert set(rule_scripts()) == set(RULE_FAMILIES)


@pytest.mark.parametrize("rule", sorted(RULE_FAMILIES))
def test_a_rules_code_inputs_are_its_allowed_families(rule):
    smk, script, code = rule_scripts()[rule]
    assert code == script, f"rule {rule} ({smk}) must list code({script!r}) as an input"
    inputs = code_inputs(script, ROOT)
    families = {p.split("/")[1] for p in inputs}
    assert families == RULE_FAMILIES[rule], f"rule {rule}: {inputs}"
    assert families <= ALLOWED[RULE_FILE_FAMILY[smk]]
    assert RULE_FILE_FAMILY[smk] in families
