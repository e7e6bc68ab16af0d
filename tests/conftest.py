"""Fixtures shared by the test modules. Shared helpers live in helpers.py; this file is never imported.

`make test` runs the suite on two pytest-xdist workers. A work unit (all its tests on one worker) is a
module by default, so a module fixture is built once, or the group GROUPS names: `default-run` for the three
modules that read the one finished default workflow (`default_run`, built once per worker that needs it, so
once), `real-<arch>` for each real profile's tests. The units that run a workflow are handed out first
(HEAVY_GROUPS order), so the two workers finish together. The SLURM module is its own unit: it runs its
own data stages locally beside its SLURM run rather than reading `default_run` (measured back to back, the
suite takes as long either way: 889 s tied, 894 s apart; it is bound by the CPU work, not the schedule).

The grouping is this file's scheduler, not xdist's `xdist_group` marks: with pytest 9.2, xdist 3.8's
`--dist loadgroup` leaves the node ids unsuffixed (it sets `item._nodeid`, which pytest no longer reads), so
every test was its own unit and both workers ran the default workflow.
"""

import os
from pathlib import Path

import pytest
from helpers import BIN, copy_project, run_cmd, workflow_cores

# Units that run a whole workflow: xdist hands units out in the order of the items, alternately to the two
# workers (default-run and SLURM on one, the real profiles on the other, at first).
HEAVY_GROUPS = ("default-run", "tests/workflow/test_slurm.py", "real-internlm2", "real-qwen2")


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """The embedded default workflow (what `make run` runs), run once in a copy of the project.

    Shared by tests/workflow/test_workflow.py, test_reruns.py and test_local_teacher_run.py: a test that changes
    anything works on a copy of it (shutil.copytree with copy2 keeps the mtimes Snakemake plans by).
    """
    # Under xdist the workers' base temps share a parent: a second worker here means the grouping broke
    # (each would run the whole workflow again, as CI once did for 30 minutes), so say so at once.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        marker = tmp_path_factory.getbasetemp().parent / "default-run.worker"
        try:
            with open(marker, "x") as f:
                f.write(worker)
        except FileExistsError:
            owner = marker.read_text()
            pytest.fail(
                f"{worker} got a test of the default workflow that {owner} runs: fix GROUPS in tests/conftest.py"
            )
    project = copy_project(tmp_path_factory.mktemp("default-run") / "project")
    result = run_cmd(
        [str(BIN / "snakemake"), "--profile", "profiles/default", "--cores", workflow_cores()],
        cwd=project,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return project


# Work units that are not their module: a module path, to its group (`{param}`: the test's parameter).
GROUPS = {
    "tests/workflow/test_workflow.py": "default-run",
    "tests/workflow/test_reruns.py": "default-run",
    "tests/workflow/test_local_teacher_run.py": "default-run",  # its teacher is the default run's model
    "tests/workflow/test_real_profiles.py": "real-{param}",
}


def group_of(nodeid: str) -> str:
    """The xdist work unit of a test, from its node id."""
    module = nodeid.split("::", 1)[0]
    group = GROUPS.get(module, module)
    if "{param}" in group:
        group = group.format(param=nodeid[nodeid.index("[") + 1 : nodeid.rindex("]")])
    return group


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    config.option.loadscopereorder = (
        False  # hand the units out in collection order (sorted below), not by size
    )
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    rank = {g: i for i, g in enumerate(HEAVY_GROUPS)}
    items.sort(
        key=lambda item: rank.get(group_of(item.nodeid), len(rank))
    )  # stable: each module keeps its order
