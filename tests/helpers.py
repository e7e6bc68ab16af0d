"""Helpers shared by the test modules: project paths, a copy of the project, running a command.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path). conftest.py holds only
fixtures; it is never imported as a module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    """A copy of the project's files (what a fresh clone has, plus uncommitted work), without results."""
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def run_cmd(args, cwd, timeout=600, env=None, **kw):
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, **kw)
