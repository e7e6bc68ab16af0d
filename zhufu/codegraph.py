"""The package's import graph as the workflow sees it: the stage modules a rule's script imports.

A rule's code inputs are the stage modules (zhufu/<family>/*.py) its script imports, directly or through
each other (`code()` in rules/common.smk calls `code_inputs`): editing a stage's own module reruns that
stage and what follows it, and nothing before it. The shared core (zhufu/*.py) stops the walk and is no
rule's input: every stage imports it, so an edit there would rerun everything (README, "Rerunning after
edits"). Which family may import which is written in docs/architecture.md; tests/core/test_imports.py
holds the package to it, and checks this walk against Python's own parser.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

# `import zhufu.a.b` and `from zhufu.a import b, c` (or a parenthesised list), at the top or in a function. A
# regex over the text, not ast: parsing every module's syntax tree at each start would slow `snakemake -n`.
IMPORT_RE = re.compile(
    r"^[ \t]*(?:import[ \t]+(zhufu[\w.]*)|from[ \t]+(zhufu[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*))",
    re.M,
)


@cache
def imported_modules(path: Path, package: Path) -> frozenset[Path]:
    """The files of `package` (the zhufu folder) that the Python file `path` imports."""
    found = set()
    for m in IMPORT_RE.finditer(path.read_text(encoding="utf-8")):
        names = [m[1]] if m[1] else [m[2]] + [f"{m[2]}.{n}" for n in re.findall(r"\w+", m[3]) if n != "as"]
        for name in names:
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # zhufu.a.b runs zhufu/a/__init__.py, then zhufu/a/b.py
                base = package.joinpath(*parts[1:i])
                for f in (base.with_suffix(".py"), base / "__init__.py"):
                    if f.is_file():
                        found.add(f)
    return frozenset(found)


@cache
def code_inputs(script: str, root: str | Path) -> list[str]:
    """The stage modules `script` (a path under the checkout `root`) imports, directly or through each
    other, as paths relative to `root`, sorted; the core is left out and stops the walk."""
    root = Path(root)
    package = root / "zhufu"
    todo, seen = [root / script], set()
    while todo:
        for f in imported_modules(todo.pop(), package):
            if f not in seen and f.parent != package:
                seen.add(f)
                todo.append(f)
    return sorted(os.path.relpath(f, root) for f in seen)
