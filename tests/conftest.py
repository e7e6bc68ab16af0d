"""Fixtures shared by the test modules. Shared helpers live in helpers.py; this file is never imported.

`make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). Every test is put in a group,
and a group runs on one worker: its module's name by default (so a module fixture is built once), or the
group a module names in its own `xdist_group` mark: `default-run` for the three modules that read the one
finished default workflow (`default_run`, built once per session), `real-<arch>` for each real profile.
The groups that run a workflow are handed out first, so that the two workers finish together.
"""

from pathlib import Path

import pytest
from helpers import BIN, copy_project, run_cmd

# Groups that run a whole workflow, longest first: xdist hands groups out in the order of the items.
HEAVY_GROUPS = ("default-run", "real-internlm2", "real-qwen2")


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """The embedded default workflow (what `make run` runs), run once in a copy of the project.

    Shared by tests/workflow/test_workflow.py, test_reruns.py and test_slurm.py: a test that changes
    anything works on a copy of it (shutil.copytree with copy2 keeps the mtimes Snakemake plans by).
    """
    project = copy_project(tmp_path_factory.mktemp("default-run") / "project")
    result = run_cmd(
        [str(BIN / "snakemake"), "--profile", "profiles/default", "--cores", "2"], cwd=project, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return project


def _group(item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return (mark.args[0] if mark.args else mark.kwargs["name"]) if mark else item.module.__name__


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    rank = {g: i for i, g in enumerate(HEAVY_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: each module keeps its order
