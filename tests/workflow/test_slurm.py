"""The workflow submitted to a real SLURM cluster (the one-node cluster of tests/slurm/start_cluster.sh).

The embedded default workflow runs with `--executor slurm` and the project's test profile in a copy of the
project (20 training iterations, one evaluation sample); its data stages are compared with the session's local
run of them (`default_data`, tests/conftest.py), made or awaited while the SLURM run waits on its jobs. Checks: every rule that is not a local rule ran as its own SLURM job that `sacct` reports
COMPLETED; the train job was given a GPU (`AllocTRES` has gres/gpu); the data stages' files are byte for
byte those of a local run; the shipped cluster profile asks for N GPUs on one node for the 8-GPU fine-tune;
a failing job makes snakemake exit non-zero promptly instead of hanging; and with a teacher that needs a
key, no generate job reaches SLURM and the key is in no job's environment or script.

Every snakemake runs under `timeout -s KILL`: a hung status loop ignores SIGTERM.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from faultserver import FaultServer
from helpers import BIN, ROOT, copy_project, tiny_teacher

# the first test also runs the workflow on SLURM (the module fixture): up to 25 min
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.timeout(2400),
]

ACCOUNT = os.environ.get("ZHUFU_SLURM_ACCOUNT", "zhufu")
# Data-stage files that must be identical between a SLURM run and a local run.
DATA_FILES = [
    "results/data/merged.json",
    "results/data/train.json",
    "results/data/clean_report.json",
    "results/data/dataset_card.md",
]
# the project's test profile for the local cluster: every run of this module on SLURM uses it
SLURM_TEST_PROFILE = ("--workflow-profile", "profiles/slurm-test")
SACCT_FORMAT = "JobID,Comment%45,State,ExitCode,Elapsed,AllocTRES%48"


def _cluster_problem() -> str | None:
    """Why the local cluster can't be used, or None when it is up with accounting and our account."""
    if not shutil.which("sinfo"):
        return "no SLURM client tools; start the test cluster with tests/slurm/start_cluster.sh (as root)"
    checks = [
        (["scontrol", "ping"], "slurmctld does not answer `scontrol ping`"),
        (["sinfo", "-h", "-o", "%T"], "sinfo fails"),
        (["sacct", "-n", "-X", "-S", "now-1minutes"], "sacct fails (is slurmdbd running?)"),
        (["sacctmgr", "-n", "-P", "list", "assoc", f"account={ACCOUNT}", "format=user"], "sacctmgr fails"),
    ]
    for cmd, why in checks:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{why} ({e}); run tests/slurm/start_cluster.sh"
        if out.returncode != 0 or "DOWN" in out.stdout:
            said = " ".join(re.sub(r"\*+", " ", out.stderr or out.stdout).split())[:200]
            return f"{why}: {said}; run tests/slurm/start_cluster.sh"
        if cmd[0] == "sinfo" and not re.search(r"idle|mixed|alloc", out.stdout):
            return f"the test node is not up ({out.stdout.strip()}); run tests/slurm/start_cluster.sh"
        if cmd[0] == "sacctmgr" and not out.stdout.strip():
            return f"SLURM account {ACCOUNT!r} has no users; run tests/slurm/start_cluster.sh"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips without a cluster; fails instead where ZHUFU_REQUIRE_SLURM=1 (CI, after start_cluster.sh)."""
    problem = _cluster_problem()
    if problem and os.environ.get("ZHUFU_REQUIRE_SLURM") == "1":
        pytest.fail(f"ZHUFU_REQUIRE_SLURM=1 but no usable SLURM cluster: {problem}")
    if problem:
        pytest.skip(f"no local SLURM cluster: {problem}")


def snakemake_call(*args: str, limit_s: int) -> dict:
    """The argv and env of snakemake under `timeout -s KILL limit_s`, for subprocess.run or Popen."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {"args": ["timeout", "-s", "KILL", str(limit_s), str(BIN / "snakemake"), *args], "env": env}


def snakemake(cwd: Path, *args: str, limit_s: int) -> tuple[subprocess.CompletedProcess, float]:
    """Run snakemake in `cwd` under `timeout -s KILL limit_s`; returns the result and the wall time."""
    start = time.monotonic()
    result = subprocess.run(**snakemake_call(*args, limit_s=limit_s), cwd=cwd, capture_output=True, text=True)
    return result, time.monotonic() - start


def slurm_run(cwd: Path, *args: str, limit_s: int):
    return snakemake(cwd, *SLURM_TEST_PROFILE, *args, limit_s=limit_s)


def submitted_job_ids(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def sacct(job_ids: list[str]) -> list[dict[str, str]]:
    fields = ["JobID", "Comment", "State", "ExitCode", "Elapsed", "AllocTRES"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), f"--format={','.join(fields)}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.stdout.splitlines() if line]


def sacct_table(job_ids: list[str]) -> str:
    out = subprocess.run(
        ["sacct", "-X", "-j", ",".join(job_ids), f"--format={SACCT_FORMAT}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def rule_of(comment: str) -> str:
    """The rule name in the --comment the SLURM plugin gives a job: rule_<name>[_wildcards_<values>]."""
    return re.sub(r"_wildcards_.*$", "", comment).removeprefix("rule_")


def job_stats(output: str) -> Counter:
    """Snakemake's 'Job stats' table (rule → count) from a run's output."""
    table = output.split("Job stats:", 1)[1]
    counts = Counter()
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def workflow_runs(slurm_cluster, request, tmp_path_factory):
    """The default workflow on SLURM, and the session's local run of its data stages to compare it with.

    The SLURM run trains 20 iterations instead of the profile's 3000 (its hook answering one input, not six)
    and evaluates one sample per blessing input instead of two, without the off-task requests: what is checked here (every rule a completed job, the train job's GPU, the data stages
    byte for byte) does not depend on how long it trains or how many answers it scores.
    """
    base = tmp_path_factory.mktemp("slurm")
    on_slurm = copy_project(base / "on_slurm")
    short = {
        "train": {"overrides": {"max_iters": 20}, "eval_inputs": ["祝姐姐生日快乐"]},
        "evaluate": {"samples": 1, "off_task": None},
    }
    (on_slurm / "short.yaml").write_text(yaml.safe_dump(short))
    log = base / "slurm_run.log"
    call = snakemake_call(
        *SLURM_TEST_PROFILE,
        *("--jobs", "4", "--configfile", "short.yaml"),
        limit_s=1500,
    )
    start = time.monotonic()
    with open(log, "w") as out:
        run = subprocess.Popen(
            **call, cwd=on_slurm, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            # the local data stages (tests/conftest.py: run once per session, perhaps by another worker) are
            # made or awaited while the SLURM run waits on its jobs: its sbatch/sacct loop holds no core
            local = request.getfixturevalue("default_data")
        except BaseException:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            raise
        returncode = run.wait()
    wall = time.monotonic() - start
    output = log.read_text()
    ids = submitted_job_ids(output)
    print(f"\nSLURM run: rc={returncode}, {wall:.0f} s wall, {len(ids)} SLURM jobs\n{sacct_table(ids)}")
    assert returncode == 0, f"snakemake on SLURM failed (rc {returncode}):\n{output[-8000:]}"
    return {"project": on_slurm, "local": local, "output": output, "job_ids": ids}


def test_every_cluster_rule_ran_as_a_completed_slurm_job(workflow_runs):
    output, ids = workflow_runs["output"], workflow_runs["job_ids"]
    local_rules = set(re.findall(r"^localrule (\w+):", output, flags=re.M))
    expected = Counter({r: n for r, n in job_stats(output).items() if r not in local_rules})
    assert expected["train"] == 1, expected
    # Generation and the base model run on the submitting host (internet, key, SQLite cache), never as jobs.
    assert {"generate", "base_model"} <= local_rules and not expected["generate"], expected
    jobs = sacct(ids)
    assert len(jobs) == len(ids)
    not_completed = [j for j in jobs if j["State"] != "COMPLETED"]
    assert not not_completed, not_completed
    assert Counter(rule_of(j["Comment"]) for j in jobs) == expected


def test_train_job_was_given_a_gpu(workflow_runs):
    train = [j for j in sacct(workflow_runs["job_ids"]) if rule_of(j["Comment"]) == "train"]
    assert len(train) == 1
    assert "gres/gpu=1" in train[0]["AllocTRES"], train[0]
    # ...and trained on CPU all the same: SLURM set CUDA_VISIBLE_DEVICES to a device that isn't there.
    assert "CUDA_VISIBLE_DEVICES" in (workflow_runs["project"] / "logs/train.log").read_text()
    assert (workflow_runs["project"] / "results/train/work_dir/last_checkpoint").is_file()
    assert (workflow_runs["project"] / "results/eval/metrics.json").is_file()


def test_data_stages_are_identical_to_a_local_run(workflow_runs):
    project, local = workflow_runs["project"], workflow_runs["local"]
    shards = sorted(p.relative_to(local).as_posix() for p in (local / "results/raw").rglob("*.json"))
    assert len(shards) == 18  # 3 styles × 6 rounds
    assert shards == sorted(
        p.relative_to(project).as_posix() for p in (project / "results/raw").rglob("*.json")
    )
    different = [f for f in shards + DATA_FILES if (project / f).read_bytes() != (local / f).read_bytes()]
    assert not different


def test_full_finetune_profile_asks_for_n_gpus_on_one_node(workflow_runs):
    """profiles/slurm, with only its marked keys edited, for the 8-GPU ZeRO-3 profile: the sbatch call.

    The test node has 2 fake GPUs and too little memory, so SLURM refuses the job; the plugin prints the
    call it made, which is what a real GPU node would receive.
    """
    project = workflow_runs["project"]
    site = project / "profiles/site-slurm"
    site.mkdir()
    text = (ROOT / "profiles/slurm/config.yaml").read_text()
    assert "CHANGE-ME-account" in text and "CHANGE-ME-gpu" in text
    for placeholder, value in [
        ("CHANGE-ME-account", ACCOUNT),
        ("CHANGE-ME-cpu", "cpu"),
        ("CHANGE-ME-gpu", "gpu"),
    ]:
        text = text.replace(placeholder, value)
    (site / "config.yaml").write_text(text)
    result, wall = snakemake(
        project,
        *("--workflow-profile", "profiles/site-slurm", "--retries", "0", "--verbose"),
        # an InternLM2 profile needs a base model of its family (the check runs before any job); the job is
        # only submitted here, so the finished run's base model stays (--rerun-triggers mtime)
        *(
            "--config",
            'train={"profile": "internlm2-chat-7b-full-zero3"}',
            'model={"source": "tiny", "tiny": {"architecture": "internlm2"}}',
        ),
        *("--rerun-triggers", "mtime", "--forcerun", "train", "--until", "train"),
        limit_s=300,
    )
    output = result.stdout + result.stderr
    calls = re.findall(r"^sbatch call: (sbatch .*?) --wrap=", output, flags=re.M)
    print(f"\nrendered in {wall:.0f} s:\n{calls[0] if calls else output[-3000:]}")
    assert calls, output[-4000:]
    call = calls[0]
    assert "--comment rule_train" in call
    for flag in [
        "--gpus=8",
        "--nodes=1",
        "--cpus-per-gpu=8",
        f"-A {ACCOUNT}",
        "-p gpu",
        "--mem 400000",
        "-t 1440",
    ]:
        assert f" {flag} " in f" {call} ", (flag, call)
    assert result.returncode != 0  # refused by the small test node, reported as a failed job


def test_a_failing_job_stops_the_run_promptly(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        '    input: "after.txt"\n'
        "rule boom:\n"
        '    output: "boom.txt"\n'
        '    log: "logs/boom.log"\n'
        '    shell: "echo zhufu-boom-marker >&2; exit 3"\n'
        "rule after:\n"
        '    input: "boom.txt"\n'
        '    output: "after.txt"\n'
        '    shell: "touch {output}"\n'
    )
    profile = tmp_path / "profiles/slurm-test"
    profile.mkdir(parents=True)
    shutil.copy(ROOT / "profiles/slurm-test/config.yaml", profile / "config.yaml")
    result, wall = slurm_run(tmp_path, limit_s=300)
    output = result.stdout + result.stderr
    print(f"\nfailing run: rc={result.returncode} after {wall:.0f} s")
    assert result.returncode not in (0, -9, 137), output[-4000:]  # failed, and not killed by the timeout
    assert wall < 180, f"a failed job took {wall:.0f} s to end the run"
    assert "Error in rule boom" in output
    ids = submitted_job_ids(output)
    assert len(ids) == 1
    [job] = sacct(ids)
    assert job["State"] == "FAILED" and job["ExitCode"] != "0:0", job
    slurm_logs = list((tmp_path / "logs/slurm/rule_boom").glob(f"{ids[0]}.log"))
    assert slurm_logs and "zhufu-boom-marker" in slurm_logs[0].read_text()
    assert not (tmp_path / "after.txt").exists()


def _stored_job_files(job_id: str) -> dict[str, str]:
    """What slurmctld keeps of a job (StateSaveLocation/hash.N/job.ID): its environment and its script."""
    state = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    location = re.search(r"^StateSaveLocation\s*=\s*(\S+)", state, flags=re.M).group(1)
    job_dir = Path(location) / f"hash.{int(job_id) % 10}" / f"job.{job_id}"
    files = {}
    for name in ("environment", "script"):
        path = job_dir / name
        if not os.access(path, os.R_OK):
            pytest.skip(f"cannot read {path} (slurmctld's state; run the SLURM tests as root)")
        files[name] = path.read_bytes().decode("utf-8", "replace")
    script = subprocess.run(
        ["scontrol", "write", "batch_script", job_id, "-"], capture_output=True, text=True, timeout=30
    )
    files["batch_script"] = script.stdout
    return files


def test_the_api_key_reaches_no_slurm_job_and_generation_stays_on_the_host(slurm_cluster, tmp_path):
    secret = "sk-test-" + os.urandom(12).hex()
    project = copy_project(tmp_path / "project")
    with FaultServer(api_key=secret) as server:
        overlay = {
            "rounds": 1,
            "grid": {
                "recipients": ["姐姐", "领导"],
                "scenes": ["生日", "春节"],
                "suitability": None,
                "holdout": {"fraction": 0},
            },
            "provider": {
                "kind": "openai",
                "model": "fault-model",
                "base_url": server.url,
                "api_key_env": "ZHUFU_TEST_SECRET_KEY",
            },
        }
        (project / "run.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
        os.environ["ZHUFU_TEST_SECRET_KEY"] = secret
        try:
            result, wall = slurm_run(
                project,
                *("--configfile", "run.yaml", "--jobs", "2", "results/data/train.json"),
                limit_s=900,
            )
        finally:
            del os.environ["ZHUFU_TEST_SECRET_KEY"]
        answered = server.successes
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert answered == 3 * 2 * 2  # generated on this host, with the key, by the local generate rule
    ids = submitted_job_ids(output)
    jobs = sacct(ids)
    print(f"\nkey run: {wall:.0f} s, {len(ids)} SLURM jobs\n{sacct_table(ids)}")
    assert [rule_of(j["Comment"]) for j in jobs] == ["clean"], jobs
    assert re.findall(r"^localrule (\w+):", output, flags=re.M).count("generate") == 3
    for job_id in ids:
        files = _stored_job_files(job_id)
        assert "PATH=" in files["environment"] and "snakemake" in files["batch_script"]  # the real things
        leaks = [name for name, text in files.items() if secret in text]
        assert not leaks, f"job {job_id}: the key is in its {leaks}"
        # The key waited for the local generate jobs in a private file of this host, gone after the run.
        key_dir = re.search(r"^ZHUFU_KEY_DIR=(.+)$", files["environment"].replace("\0", "\n"), flags=re.M)
        assert key_dir and not Path(key_dir.group(1)).exists()
    logs = [
        p for p in (project / "logs").rglob("*") if p.is_file() and secret in p.read_text(errors="replace")
    ]
    assert not logs, logs


def test_a_local_teacher_generates_in_one_gpu_job_the_only_cache_writer(slurm_cluster, tmp_path):
    """provider.kind local on SLURM: every shard comes from one `generate_local` job on the GPU partition,
    with --gpus from provider.gpus, serving a tiny Qwen2 with `zhufu serve-model`; no generate job runs on
    the submitting host, so that one job is the only process that writes the answer cache."""
    import json

    from zhufu.generate.cache import AnswerCache

    model = tiny_teacher(tmp_path / "teacher")
    project = copy_project(tmp_path / "project")
    overlay = {
        "rounds": 1,
        "grid": {
            "recipients": ["姐姐", "领导"],
            "scenes": ["生日", "春节"],
            "suitability": None,
            "holdout": {"fraction": 0},
        },
        "provider": {
            "kind": "local",
            "model": "tiny-teacher",
            "model_path": str(model),
            "max_tokens": 16,
            "gpus": 1,
        },
    }
    (project / "run.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
    result, wall = slurm_run(
        project, "--configfile", "run.yaml", "--jobs", "2", "results/data/merged.json", limit_s=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    ids = submitted_job_ids(output)
    jobs = sacct(ids)
    print(f"\nlocal-teacher run: {wall:.0f} s, {len(ids)} SLURM jobs\n{sacct_table(ids)}")
    [job] = jobs
    assert rule_of(job["Comment"]) == "generate_local" and job["State"] == "COMPLETED", jobs
    assert "gres/gpu=1" in job["AllocTRES"], job
    assert not re.findall(r"^localrule generate\w*:", output, flags=re.M)  # nothing generated on this host
    log = (project / "logs/generate/local.log").read_text(encoding="utf-8")
    assert "local teacher: ready at http://127.0.0.1:" in log and "local teacher: stopped" in log
    requested = [int(n) for n in re.findall(r"(\d+) requested", log)]
    assert len(requested) == 3 and all(requested)  # 3 styles × 1 round, from the one job
    merged = json.loads((project / "results/data/merged.json").read_text(encoding="utf-8"))
    with AnswerCache(project / ".zhufu-cache/llm.sqlite") as cache:
        assert len(cache) == sum(requested) == len(merged)
