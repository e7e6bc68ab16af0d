"""The seed's real training profiles, run by the workflow at tiny size: internlm2-chat-7b-qlora over the tiny
InternLM2 (its own modeling code, trust_remote_code, its template, a tokenizer converted from sentencepiece)
and qwen2.5-7b-instruct-qlora over the tiny Qwen2, each with its own packing to 2048 tokens, epoch
schedule, warm-up, checkpoints and EvaluateChatHook. Only what a CPU cannot do is swapped out: 4-bit
quantisation (bitsandbytes needs CUDA) and fp16/bf16 AMP (AmpOptimWrapper asserts a GPU), so the weights are
fp32. check_format → train → pth_to_hf → merge_model → evaluate, then `zhufu chat` and `zhufu serve`."""

import json
import re
import subprocess
import sys
import urllib.request

import pytest
from helpers import BIN, TIANJI_SYSTEM, copy_run, greedy_answer, run_cmd, workflow_cores

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

CPU_SWAP = {"quantization": None, "optim_wrapper": "OptimWrapper", "torch_dtype": "float32"}
PROFILES = {
    "internlm2": {"profile": "internlm2-chat-7b-qlora", "template": "internlm2_chat", "head": "output"},
    "qwen2": {"profile": "qwen2.5-7b-instruct-qlora", "template": "qwen_chat", "head": "lm_head"},
}
LR = 2e-4  # both QLoRA profiles' learning rate
REQUEST = "祝妹妹谈判顺利，小红书风格"
EVAL_INPUTS = ["祝姐姐生日快乐", REQUEST]


# each profile's tests are one pytest-xdist work unit (tests/conftest.py GROUPS): its workflow runs once, on one worker
@pytest.fixture(
    scope="module",
    params=sorted(PROFILES),
)
def run(request, default_data, tmp_path_factory):
    """The profile's workflow from the default's data stages (the same config but for model, train and
    evaluate, so the same shards and train.json): base model, format check, training and what follows."""
    arch = request.param
    project = copy_run(default_data, tmp_path_factory.mktemp(f"real-{arch}") / "project")
    overlay = {
        "model": {"source": "tiny", "tiny": {"architecture": arch}},
        # the hook's inputs are the config's, not the profile's: two of Tianji's six (each answered up to the
        # profile's 600 tokens three times; six took 31 s of InternLM2's 120 s of training)
        "train": {"profile": PROFILES[arch]["profile"], "overrides": CPU_SWAP, "eval_inputs": EVAL_INPUTS},
        "evaluate": {"samples": 1},  # the evaluation's own setting, not the profile's: half the answers
    }
    (project / "overlay.yaml").write_text(json.dumps(overlay), encoding="utf-8")
    r = run_cmd(
        [
            str(BIN / "snakemake"),
            "--profile",
            "profiles/default",
            "--cores",
            workflow_cores(),
            "--configfile",
            "overlay.yaml",
        ],
        cwd=project,
        timeout=2400,
    )
    (project.parent / "workflow.log").write_text(r.stdout + r.stderr, encoding="utf-8")
    assert r.returncode == 0, (
        r.stderr[-6000:],
        (project / "logs/train.log").read_text(errors="replace")[-4000:],
    )
    return arch, project


def test_another_model_and_profile_on_the_same_data_start_at_the_base_model(run):
    """A user who switches model and training profile keeps the shards, merged.json and train.json: the run
    starts at the base model (the copy of the default's data stages is planned as up to date)."""
    _, project = run
    output = (project.parent / "workflow.log").read_text(encoding="utf-8")
    ran = set(re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M))
    assert {"base_model", "check_format", "train", "evaluate"} <= ran, ran
    assert not ran & {"generate", "merge", "clean"}, ran


def scalars(project) -> list[dict]:
    (path,) = (project / "results/train/work_dir").glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_profile_is_rendered_as_it_is_but_for_the_cpu_swap(run):
    arch, project = run
    text = (project / "results/train/xtuner_config.py").read_text()
    assert f"prompt_template = PROMPT_TEMPLATE.{PROFILES[arch]['template']}" in text
    for line in (
        "max_length = 2048",
        "pack_to_max_length = True",
        "batch_size = 1",
        "accumulative_counts = 16",
        "max_epochs = 3",
        "warmup_ratio = 0.03",
        "lr = 0.0002",
        "evaluation_freq = 50",
    ):
        assert line in text, line
    assert "type=EvaluateChatHook" in text and "max_new_tokens=600" in text
    assert "by_epoch=True" in text and "type=LinearLR" in text and "DefaultSampler" in text
    # the swap, and nothing else: no 4-bit config, fp32, no AMP
    assert "BitsAndBytesConfig" not in text and "torch_dtype=torch.float32" in text
    assert "AmpOptimWrapper" not in text


def test_training_packs_runs_the_epoch_schedule_and_leaves_the_warm_up(run):
    arch, project = run
    check = json.loads((project / "results/data/format_check.json").read_text())
    assert check["packed"] is True and check["template"] == PROFILES[arch]["template"]
    assert check["samples"] < check["rows"] / 5  # many records to a 2048-token sample
    log = (project / "logs/train.log").read_text(errors="replace")
    totals = {int(n) for n in re.findall(r"Iter\(train\) \[\s*\d+/(\d+)\]", log)}
    (total,) = totals
    # 3 epochs of the packed samples training saw: XTuner's unseeded shuffle before packing moves each of its
    # 8 shards' counts by one at most, so training's count is within 7 of the check's (measured: 30 and 32)
    assert total % 3 == 0 and abs(total // 3 - check["samples"]) <= 7
    assert check["schedule"]["at_least"]["iterations"] == 3 * (check["samples"] - 7)
    assert "Sample output" in log  # EvaluateChatHook answered during training, the config's inputs
    assert all(text in log for text in EVAL_INPUTS) and "祝领导春节快乐" not in log
    rows = scalars(project)
    lrs = [row["lr"] for row in rows if "lr" in row]
    assert lrs and max(lrs) > 0.5 * LR, f"the warm-up never left its start factor: {lrs}"
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses and all(0 < x < 20 for x in losses)
    last = (project / "results/train/work_dir/last_checkpoint").read_text().strip()
    assert last.endswith(f"iter_{total}.pth")


def test_the_adapter_wraps_what_the_seed_wraps(run):
    """target_modules null: XTuner's find_all_linear_names skips lm_head and output_layer, so InternLM2's
    head, named `output`, is wrapped (as the seed's and Tianji's adapters are); Qwen's lm_head is not."""
    arch, project = run
    targets = set(
        json.loads((project / "results/model/adapter/adapter_config.json").read_text())["target_modules"]
    )
    if arch == "internlm2":
        assert {"wqkv", "wo", "w1", "w2", "w3", "output"} == targets
    else:
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == targets


def test_evaluate_scores_base_and_tuned(run):
    _, project = run
    rows = [
        json.loads(line) for line in (project / "results/eval/generations.jsonl").read_text().splitlines()
    ]
    assert {r["model"] for r in rows} == {"base", "tuned"}
    off_task = [r for r in rows if r.get("source") == "off_task"]
    # 33 blessing inputs (27 held-out cells + Tianji's 6) and the off-task requests, one sample each
    assert len(rows) - len(off_task) == 2 * 33
    metrics = json.loads((project / "results/eval/metrics.json").read_text())
    assert len(off_task) == 2 * metrics["settings"]["off_task_inputs"] >= 60
    assert "| held-out | length_band |" in (project / "results/eval/table.md").read_text()


def test_chat_and_serve_answer_from_the_merged_model(run):
    _, project = run
    merged = project / "results/model/merged"
    expected = greedy_answer(merged, REQUEST, system=TIANJI_SYSTEM, max_new_tokens=24)
    assert expected
    r = run_cmd(["zhufu", "chat", str(merged), REQUEST, "--max-new-tokens", "24"], cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == expected
    cmd = [str(BIN / "zhufu"), "serve", str(merged), "--port", "0", "--max-new-tokens", "24"]
    serve = subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"http://[\d.]+:\d+/", serve.stdout.readline())[0]
        req = urllib.request.Request(
            url + "api/chat",
            data=json.dumps({"text": REQUEST}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert json.loads(resp.read())["output"] == expected
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    print(f"\n{sys.argv[0]}: {project.name}: zhufu chat answered {expected!r}")
