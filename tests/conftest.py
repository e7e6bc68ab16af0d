"""Fixtures shared by the test modules. Shared helpers live in helpers.py; this file is never imported.

`make test` runs the suite on three pytest-xdist workers over the machine's two cores: the SLURM module and
the tests that wait on servers or on snakemake leave a core idle, which a third worker fills (measured: the
suite took 973 s on two workers, 150% CPU, and 799 s on three, 174% CPU). A work unit (all its tests on one
worker) is a module by default, so a module fixture is built once, or the group GROUPS names: `default-run`
for the three modules that read the one finished default workflow (`default_run`), `real-<arch>` for each
real profile's tests. The units that run a workflow are handed out first (FIRST_UNITS order).

The default's data stages (`default_data`: generate, merge, clean) run once per session for every worker
that needs them (a file lock under the session's shared temp folder): the default run, both real profiles
and the SLURM module's local comparison start from a copy.

The grouping is this file's scheduler, not xdist's `xdist_group` marks: with pytest 9.2, xdist 3.8's
`--dist loadgroup` leaves the node ids unsuffixed (it sets `item._nodeid`, which pytest no longer reads), so
every test was its own unit and both workers ran the default workflow.
"""

import os
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import BIN, copy_project, copy_run, run_cmd, workflow_cores

# The units handed out first, the longest first (their summed test times, measured): the workflow runs, then
# the modules of a minute or more, so that the last units to run are the short ones and no worker is left
# with a long one while the others idle. xdist gives one unit to each worker at first, then the next to the
# first worker near the end of its unit.
FIRST_UNITS = (
    "default-run",
    "tests/workflow/test_slurm.py",
    "real-internlm2",
    "real-qwen2",
    "tests/train/test_train.py",
    "tests/workflow/test_shared_limits.py",
    "tests/workflow/test_generate_rule.py",
    "tests/train/test_schedule_check.py",
    "tests/model/test_review.py",
    "tests/data/test_dataset.py",
    "tests/generate/test_local_teacher.py",
    "tests/train/test_format_check.py",
)


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


def session_dir(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker sees (the workers' base temps share a parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def default_data(tmp_path_factory) -> Path:
    """The embedded default's data stages (`snakemake results/data/train.json`: the 18 generate jobs, merge and
    clean, with the answer cache and the logs), run once for the whole session, whichever worker asks first.

    The default run, both real profiles and the SLURM module's byte-for-byte comparison all start from it (a
    copy each, copy_run): their data stages are the default's, and each of the four ran them itself before, about
    45 s of a core each. The first worker to ask runs it under a file lock; the others wait for it. A failed run is
    kept (default-data.failed) so that every test that needs it fails with its output, not by running it again.
    """
    shared = session_dir(tmp_path_factory)
    project = shared / "default-data" / "project"
    done, failed = shared / "default-data.done", shared / "default-data.failed"
    with FileLock(shared / "default-data.lock"):
        if failed.exists():
            pytest.fail(f"the default data stages failed in this session:\n{failed.read_text()[-6000:]}")
        if not done.exists():
            copy_project(project)
            result = run_cmd(
                [
                    str(BIN / "snakemake"),
                    # every worker that needs it waits for it: it takes the machine's cores
                    *("--profile", "profiles/default", "--cores", str(os.cpu_count() or 1)),
                    "results/data/train.json",
                ],
                cwd=project,
                timeout=900,
            )
            if result.returncode != 0:
                failed.write_text(result.stdout[-3000:] + result.stderr[-6000:])
                pytest.fail(f"the default data stages failed:\n{result.stderr[-6000:]}")
            done.write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))
    return project


@pytest.fixture(scope="session")
def default_run(default_data, tmp_path_factory) -> Path:
    """The embedded default workflow (what `make run` runs), finished once in a copy of `default_data`.

    Shared by tests/workflow/test_workflow.py, test_reruns.py and test_local_teacher_run.py: a test that changes
    anything works on a copy of it (copy_run).
    """
    # Under xdist the workers' base temps share a parent: a second worker here means the grouping broke
    # (each would run the whole workflow again, as CI once did for 30 minutes), so say so at once.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        marker = session_dir(tmp_path_factory) / "default-run.worker"
        try:
            with open(marker, "x") as f:
                f.write(worker)
        except FileExistsError:
            owner = marker.read_text()
            pytest.fail(
                f"{worker} got a test of the default workflow that {owner} runs: fix GROUPS in tests/conftest.py"
            )
    project = copy_run(default_data, tmp_path_factory.mktemp("default-run") / "project")
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


def pytest_configure(config):
    """Torch in every process a test starts outside Snakemake (`zhufu train|chat|serve`, torch in the worker
    itself) gets the CPUs shared among the xdist workers, as the workflow runs get --cores workflow_cores()
    (Snakemake sets a job's OMP_NUM_THREADS to its threads; nothing else would). With 2 threads beside a busy
    worker, the tiny model's training iterations took 4.4× as long as 1 thread alone (bench/threads.py)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, workflow_cores())


def pytest_collection_modifyitems(config, items):
    rank = {g: i for i, g in enumerate(FIRST_UNITS)}
    items.sort(
        key=lambda item: rank.get(group_of(item.nodeid), len(rank))
    )  # stable: each module keeps its order
