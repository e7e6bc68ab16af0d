"""The training chain on CPU with the tiny model and real XTuner: base model, train, resume, convert, merge, chat.

Fast tests cover the base model sources and errors. The slow ones train for real (a few dozen iterations).
"""

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from helpers import BIN, ROOT, cuda_available, run_cmd

from zhufu.errors import ModelError
from zhufu.tianji import TIANJI_SYSTEM
from zhufu.train.base_model import build_tiny_model, check_model_dir, prepare_base_model
from zhufu.train.xtuner_config import write_config

ZHUFU = str(BIN / "zhufu")
RECIPIENTS = ["姐姐", "妹妹", "弟弟", "爷爷", "领导", "同事"]
SCENES = ["生日", "春节", "中秋节", "谈判顺利", "工作升职"]
STYLE_BANK = {
    "，小红书风格": [
        "{s}快乐呀，{r}要天天开心哦🍀",
        "把好运装进口袋，{s}也要闪闪发光呀✨",
        "{r}，愿你被温柔偏爱呢🌷",
    ],
    "": ["祝{r}{s}快乐，万事如意。", "{r}，{s}快乐，身体健康！"],
    "，严肃风格": ["尊敬的{r}，值此{s}之际，谨致以诚挚的祝福，祝您事业顺遂、身体康健。"],
}


def write_train_json(path: Path) -> Path:
    rng = random.Random(0)
    rows = [
        {
            "conversation": [
                {"system": TIANJI_SYSTEM, "input": f"祝{r}{s}{t}", "output": rng.choice(b).format(r=r, s=s)}
            ]
        }
        for r in RECIPIENTS
        for s in SCENES
        for t, b in STYLE_BANK.items()
    ]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_train_json(root / "train.json")
    model = build_tiny_model(data, root / "base_model", seed=1)
    return data, model


def user_config(tmp_path, **model) -> Path:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    cfg["model"].update(model)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- base model


def test_tiny_model_is_built_deterministically(tiny, tmp_path):
    data, model = tiny
    again = build_tiny_model(data, tmp_path / "again", seed=1)
    assert digest(model) == digest(again)
    config = json.loads((model / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 64)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert (model / "model.safetensors").is_file()


def test_tiny_tokenizer_is_byte_level_chatml(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    assert type(tok).__name__ == "Qwen2TokenizerFast"  # so XTuner adds no BOS, as for Qwen
    assert tok.eos_token == "<|im_end|>" and 300 < len(tok) <= 2048
    ids = tok.encode("<|im_start|>user\n祝姐姐生日快乐🎂<|im_end|>", add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "<|im_start|>user\n祝姐姐生日快乐🎂<|im_end|>"  # byte level: nothing is unknown
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_tokenizer_keeps_each_han_character_one_token(tiny):
    """`char` (the default): 姐姐 in the request and in the answer are the same tokens, so the model can
    copy a recipient; `bpe` merges the request's words into template tokens (祝姐姐, 祝妹妹…)."""
    from transformers import AutoTokenizer

    from zhufu.train.base_model import _training_texts, build_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    ids = tok.encode("祝姐姐生日快乐", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["祝", "姐", "姐", "生", "日", "快", "乐"]
    assert json.loads((tiny[1] / "zhufu_model.json").read_text())["tokenizer"] == "char"

    bpe = build_tokenizer(_training_texts(tiny[0]), 2048, "bpe")
    pieces = [bpe.decode([i]) for i in bpe.encode("祝姐姐生日快乐", add_special_tokens=False)]
    assert len(pieces) < 7 and "".join(pieces) == "祝姐姐生日快乐"
    assert not {"姐"} & set(pieces), pieces  # the recipient is inside a longer token


def test_missing_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    result = run_cmd(
        [
            ZHUFU,
            "base-model",
            "--config",
            str(user_config(tmp_path, source="path", path=str(missing))),
            "-o",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_model_dir_without_tokenizer_or_config_is_named(tmp_path, tiny):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ModelError, match=rf"{re.escape(str(bare))} has no config\.json"):
        check_model_dir(bare)
    (bare / "config.json").write_text((tiny[1] / "config.json").read_text())
    with pytest.raises(ModelError, match="has no tokenizer"):
        check_model_dir(bare)
    (bare / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json cannot be read"):
        check_model_dir(bare)


def test_path_source_links_the_model_and_records_it(tmp_path, tiny):
    from transformers import AutoTokenizer

    out = prepare_base_model(tmp_path / "results" / "base_model", source="path", path=str(tiny[1]))
    assert (out / "model.safetensors").is_symlink()
    assert (out / "model.safetensors").resolve() == (tiny[1] / "model.safetensors").resolve()
    record = json.loads((out / "zhufu_model.json").read_text())
    assert record["source"] == "path" and record["resolved"] == str(tiny[1].resolve())
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    # relinking replaces the directory whole, and the user's model directory is never written to
    before = digest(tiny[1])
    prepare_base_model(out, source="path", path=str(tiny[1]))
    assert digest(tiny[1]) == before


class FakeModelScope(http.server.BaseHTTPRequestHandler):
    """The two ModelScope hub endpoints snapshot_download uses: the file list and one file."""

    root: Path
    requests: list[str]

    def do_GET(self):  # noqa: N802
        self.requests.append(self.path)
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "models"] and len(parts) >= 6:
            repo = self.root / parts[3] / parts[4]
            if parts[5:] == ["repo", "files"] and repo.is_dir():
                files = [
                    {
                        "Path": str(p.relative_to(repo)),
                        "Name": p.name,
                        "Type": "blob",
                        "Size": p.stat().st_size,
                        "Sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                        "Revision": "master",
                    }
                    for p in sorted(repo.rglob("*"))
                    if p.is_file()
                ]
                return self._send(
                    json.dumps({"Code": 200, "Success": True, "Data": {"Files": files}}).encode()
                )
            if parts[5:] == ["repo"] and (repo / query.get("FilePath", "")).is_file():
                return self._send((repo / query["FilePath"]).read_bytes())
        self.send_response(404)
        self.end_headers()

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def modelscope_endpoint(tmp_path, tiny):
    root = tmp_path / "hub"
    (root / "zhufu").mkdir(parents=True)
    for f in tiny[1].iterdir():
        (root / "zhufu" / "tiny-qwen2").mkdir(exist_ok=True)
        (root / "zhufu" / "tiny-qwen2" / f.name).write_bytes(f.read_bytes())
    handler = type("Handler", (FakeModelScope,), {"root": root, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()


def test_modelscope_source_downloads_through_the_hub_api(tmp_path, modelscope_endpoint):
    endpoint, requests = modelscope_endpoint
    cache = tmp_path / "ms-cache"
    config = user_config(
        tmp_path, source="modelscope", modelscope_id="zhufu/tiny-qwen2", cache_dir=str(cache)
    )
    out = tmp_path / "results" / "base_model"
    env = {"MODELSCOPE_ENDPOINT": endpoint, "MODELSCOPE_CACHE": str(cache)}
    result = run_cmd(
        [ZHUFU, "base-model", "--config", str(config), "-o", str(out)], cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("/repo/files" in r for r in requests) and any(
        "FilePath=model.safetensors" in r for r in requests
    )
    assert (
        (out / "model.safetensors").resolve().is_relative_to(cache.resolve())
    )  # downloaded outside results/
    record = json.loads((out / "zhufu_model.json").read_text())
    assert record["source"] == "modelscope" and record["modelscope_id"] == "zhufu/tiny-qwen2"
    check_model_dir(out)
    # an id the hub does not have: one clear line naming it
    bad = user_config(tmp_path, source="modelscope", modelscope_id="zhufu/missing", cache_dir=str(cache))
    result = run_cmd(
        [ZHUFU, "base-model", "--config", str(bad), "-o", str(out)], cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 1
    assert "zhufu/missing" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------- training


def render(tmp_path, tiny, name="xtuner_config.py", **overrides) -> Path:
    settings = {"max_iters": 20, "save_steps": 10, "evaluation_freq": 20, "log_interval": 5, "batch_size": 4}
    return write_config(
        tmp_path / name,
        profile="cpu-tiny",
        overrides={**settings, **overrides},
        model_path=tiny[1],
        data_path=tiny[0],
        evaluation_inputs=["祝妹妹谈判顺利，小红书风格"],
    )


def iterations_logged(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"Iter\(train\) \[\s*(\d+)/", text)]


# Whichever chain test runs first also trains, converts and merges (up to 900 + 600 + 600 s).
CHAIN_TIMEOUT = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny):
    """Train (20 iterations), convert and merge once, through the CLI, for the tests below."""
    root = tmp_path_factory.mktemp("chain")
    config = render(root, tiny)
    wd = root / "work_dir"
    # as on a GPU-less node of a SLURM test cluster, where --gpus=1 sets CUDA_VISIBLE_DEVICES
    trained = run_cmd(
        [ZHUFU, "train", str(config), "--work-dir", str(wd)],
        cwd=root,
        timeout=900,
        env={"CUDA_VISIBLE_DEVICES": "0"},
    )
    adapter = root / "adapter"
    converted = run_cmd([ZHUFU, "pth-to-hf", str(config), str(wd), "-o", str(adapter)], cwd=root, timeout=600)
    merged = root / "merged"
    merging = run_cmd(
        [ZHUFU, "merge-model", str(tiny[1]), str(adapter), "-o", str(merged)], cwd=root, timeout=600
    )
    return {
        "root": root,
        "wd": wd,
        "adapter": adapter,
        "merged": merged,
        "base": tiny[1],
        "results": (trained, converted, merging),
    }


@pytest.mark.slow
@CHAIN_TIMEOUT
def test_cpu_chain_trains_converts_and_merges(chain):
    trained, converted, merging = chain["results"]
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    out = trained.stdout + trained.stderr
    assert iterations_logged(out)[-1] == 20
    if cuda_available({"CUDA_VISIBLE_DEVICES": "0"}):  # device 0 is real: it is used, nothing is ignored
        assert re.search(r"running on cuda: ", out) and "ignoring CUDA_VISIBLE_DEVICES" not in out
    else:  # a GPU-less node that SLURM gave --gpus=1: the variable names no device and is dropped
        assert re.search(r"running on cpu: ", out)
        assert "no usable CUDA device: ignoring CUDA_VISIBLE_DEVICES='0'" in out
    assert "祝妹妹谈判顺利，小红书风格" in out  # EvaluateChatHook ran
    last = (chain["wd"] / "last_checkpoint").read_text().strip()
    assert Path(last).name == "iter_20.pth" and Path(last).is_file()
    assert oct(Path(last).stat().st_mode & 0o222) == "0o0"  # checkpoints are made read-only
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert (chain["adapter"] / "adapter_config.json").is_file()
    assert (chain["adapter"] / "adapter_model.safetensors").is_file()
    assert merging.returncode == 0, merging.stderr[-3000:]
    assert (chain["merged"] / "model.safetensors").is_file()


@pytest.mark.slow
@CHAIN_TIMEOUT
def test_rerunning_a_finished_run_trains_nothing_and_names_the_final_checkpoint(chain, tmp_path):
    """What Snakemake does when it reruns train with unchanged inputs: it deletes last_checkpoint first.

    On a copy of the chain's work dir: the module's chain stays as the other tests expect it.
    """
    if chain["results"][0].returncode != 0:
        pytest.skip("training failed")
    wd = shutil.copytree(chain["wd"], tmp_path / "work_dir", symlinks=True)
    (wd / "last_checkpoint").unlink()
    again = run_cmd(
        [ZHUFU, "train", str(chain["root"] / "xtuner_config.py"), "--work-dir", str(wd)],
        cwd=tmp_path,
        timeout=900,
    )
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert re.search(rf"resuming from {re.escape(str(wd))}/iter_20\.pth", out)
    assert not [i for i in iterations_logged(out) if i <= 20]
    assert Path((wd / "last_checkpoint").read_text().strip()) == wd / "iter_20.pth"
    assert not (tmp_path / "stale_runs").exists()  # the copy was recognised as the same run


@pytest.mark.slow
@CHAIN_TIMEOUT
def test_merged_model_keeps_tokenizer_and_generates(chain):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chain["merged"])
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(chain["merged"], torch_dtype=torch.float32)
    prompt = tok.apply_chat_template(
        [
            {"role": "system", "content": TIANJI_SYSTEM},
            {"role": "user", "content": "祝姐姐生日快乐，小红书风格"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
@CHAIN_TIMEOUT
def test_chat_one_shot_on_merged_and_on_base_plus_adapter(chain):
    ask = "祝妹妹谈判顺利，小红书风格"
    merged = run_cmd([ZHUFU, "chat", str(chain["merged"]), ask, "--max-new-tokens", "32"], cwd=chain["root"])
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert merged.stdout.strip()
    adapted = run_cmd(
        [
            ZHUFU,
            "chat",
            str(chain["base"]),
            ask,
            "--adapter",
            str(chain["adapter"]),
            "--max-new-tokens",
            "32",
        ],
        cwd=chain["root"],
    )
    assert adapted.returncode == 0, adapted.stderr[-2000:]
    assert adapted.stdout.strip()


@pytest.mark.slow
@CHAIN_TIMEOUT
def test_evaluate_compares_base_and_tuned(chain):
    """`zhufu evaluate` on the chain's models: one greedy answer per evaluation input and model, scored and
    summarised into the four result files."""
    outdir = chain["root"] / "eval"
    result = run_cmd(
        [
            ZHUFU,
            "evaluate",
            "--base",
            str(chain["base"]),
            "--tuned",
            str(chain["merged"]),
            "-o",
            str(outdir),
            "--greedy",
        ],
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [
        json.loads(line) for line in (outdir / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    tianji = [r["input"] for r in rows if r["model"] == "base" and r["source"] == "tianji"]
    assert tianji == config["evaluate"]["inputs"]  # Tianji's six, in order, beside the held-out pairs
    base = [(r["input"], r["sample"]) for r in rows if r["model"] == "base"]
    assert base == [(r["input"], r["sample"]) for r in rows if r["model"] == "tuned"]  # the same inputs
    assert {r["sample"] for r in rows} == {0}  # greedy: one answer each
    assert (
        sum(r["output"] != s["output"] for r, s in zip(rows[: len(base)], rows[len(base) :], strict=True))
        >= 1
    )
    metrics = json.loads((outdir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["answers"] == {"base": len(base), "tuned": len(base)}
    assert "length_band" in (outdir / "table.md").read_text(encoding="utf-8")
    assert (outdir / "table.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # up to 600 s to the first checkpoint, 900 s to resume
def test_train_rerun_after_kill_9_resumes_from_the_checkpoint(tmp_path, tiny):
    iters = 100
    # 100 iterations: killed half a second after iter_20.pth (near 30 on this CPU, 70 at a GPU's 0.01 s an
    # iteration), the resumed run trains the rest; with 200 its 180 took 71 s of the test's 107 s in make test
    config = render(tmp_path, tiny, max_iters=iters, save_steps=10, log_interval=5, evaluation_freq=1000)
    wd = tmp_path / "work_dir"
    log1 = open(tmp_path / "run1.log", "w")  # noqa: SIM115
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen(
        [ZHUFU, "train", str(config), "--work-dir", str(wd)],
        cwd=tmp_path,
        stdout=log1,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.time() + 600
    while not (wd / "iter_20.pth").exists():
        assert first.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.5)
    time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    log1.close()
    assert first.returncode == -signal.SIGKILL
    # the XTuner child dies with the launcher: nothing keeps writing into the work dir
    deadline = time.time() + 30
    while any(str(wd) in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()):
        assert time.time() < deadline, "the training process outlived its launcher"
        time.sleep(0.5)
    killed_at = max(iterations_logged((tmp_path / "run1.log").read_text()))
    assert killed_at < iters
    saved = sorted(int(p.stem.split("_")[1]) for p in wd.glob("iter_*.pth"))
    assert (wd / "last_checkpoint").exists()

    second = run_cmd([ZHUFU, "train", str(config), "--work-dir", str(wd)], cwd=tmp_path, timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    resumed_from = int(re.search(r"resuming from \S*iter_(\d+)\.pth", out).group(1))
    assert resumed_from == saved[-1] or resumed_from == saved[-2]  # the newest complete checkpoint
    assert re.search(rf"resumed epoch: \d+, iter: {resumed_from}", out)  # mmengine's own confirmation
    iterations = iterations_logged(out)
    assert iterations[0] > resumed_from and iterations[-1] == iters  # no step is trained twice from scratch
    assert Path((wd / "last_checkpoint").read_text().strip()).name == f"iter_{iters}.pth"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_returns_the_real_exit_code(tmp_path, tiny):
    broken = tmp_path / "broken_model"
    config = write_config(
        tmp_path / "cfg.py",
        profile="cpu-tiny",
        overrides={"max_iters": 2},
        model_path=broken,
        data_path=tiny[0],
    )
    result = run_cmd(
        [ZHUFU, "train", str(config), "--work-dir", str(tmp_path / "wd")], cwd=tmp_path, timeout=600
    )
    assert result.returncode != 0
    assert "broken_model" in result.stdout + result.stderr
    missing = run_cmd([ZHUFU, "train", str(tmp_path / "nope.py")], cwd=tmp_path, timeout=120)
    assert missing.returncode == 1 and "XTuner config not found" in missing.stderr


def test_qlora_on_cpu_is_refused_with_a_reason(tmp_path, tiny):
    config = write_config(
        tmp_path / "cfg.py",
        profile="internlm2-chat-7b-qlora",
        overrides=None,
        model_path=tiny[1],
        data_path=tiny[0],
    )
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so that this holds on a GPU machine as on a CPU-only one
    result = run_cmd(
        [sys.executable, "-m", "zhufu", "train", str(config)],
        cwd=tmp_path,
        timeout=120,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 1
    assert "QLoRA (bitsandbytes 4-bit) needs a CUDA GPU" in result.stderr
