"""`zhufu chat`: one-shot and interactive modes, on the tiny model (trained or not, the CLI behaves the same)."""

import json

import pytest
from helpers import BIN, greedy_answer, run_cmd

from zhufu.model.chat import build_prompt, load_chat_model, replies, reply
from zhufu.tianji import TIANJI_SYSTEM
from zhufu.train.base_model import build_tiny_model

ZHUFU = str(BIN / "zhufu")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    rows = [
        {
            "conversation": [
                {"system": TIANJI_SYSTEM, "input": f"祝{r}生日快乐，小红书风格", "output": f"{r}生日快乐呀✨"}
            ]
        }
        for r in ("姐姐", "妹妹", "弟弟", "爷爷", "奶奶", "领导")
    ]
    (root / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return build_tiny_model(root / "train.json", root / "model", vocab_size=400, seed=3)


def test_one_shot_prints_one_answer(model, tmp_path):
    ask = "祝妹妹谈判顺利，小红书风格"
    expected = greedy_answer(model, ask, system=TIANJI_SYSTEM, max_new_tokens=8)
    assert expected and "\n" not in expected  # the oracle's answer is one non-empty line
    result = run_cmd([ZHUFU, "chat", str(model), ask, "--max-new-tokens", "8"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == expected + "\n"


def test_interactive_mode_answers_each_line_afresh(model, tmp_path):
    """No history by default: the same request twice gets the same (greedy) answer, no RESET needed."""
    ask = "祝姐姐生日快乐，小红书风格\n"
    result = run_cmd(
        [ZHUFU, "chat", str(model), "--max-new-tokens", "8"], cwd=tmp_path, input=ask * 3, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = greedy_answer(model, ask.strip(), system=TIANJI_SYSTEM, max_new_tokens=8)
    assert expected and "\n" not in expected
    assert result.stdout.split("\n") == [expected, expected, expected, ""]


def test_history_mode_sends_the_conversation(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    history = [{"role": "user", "content": "第一句"}, {"role": "assistant", "content": "回答一"}]
    prompt = build_prompt(
        tok, [{"role": "system", "content": "S"}, *history, {"role": "user", "content": "第二句"}]
    )
    assert prompt.index("第一句") < prompt.index("回答一") < prompt.index("第二句")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_missing_model_is_one_clear_line(tmp_path):
    result = run_cmd([ZHUFU, "chat", str(tmp_path / "nope"), "祝姐姐生日快乐"], cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"zhufu chat: error: model directory {tmp_path / 'nope'} does not exist; "
        "pass a model directory, e.g. results/model/merged (make run writes it)"
    )


def test_adapter_without_adapter_config_is_named(model, tmp_path):
    result = run_cmd([ZHUFU, "chat", str(model), "x", "--adapter", str(tmp_path)], cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "has no adapter_config.json" in result.stderr


REQUESTS = ["祝姐姐生日快乐", "祝领导春节快乐，严肃风格", "你好", "祝妹妹谈判顺利，小红书风格呀呀呀"]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_batched_replies_are_the_one_at_a_time_replies(model, temperature):
    """replies() pads a batch on the left and samples each row from its own seeded generator: what reply()
    answers each request with its seed, in a batch of one and of four (prompts of different lengths)."""
    chat = load_chat_model(model)
    side = chat.tokenizer.padding_side
    texts = REQUESTS * 2
    seeds = [11 * k for k in range(len(texts))]
    kw = dict(system=TIANJI_SYSTEM, max_new_tokens=24, temperature=temperature)
    one = [reply(chat, t, seed=s, **kw) for t, s in zip(texts, seeds, strict=True)]
    assert replies(chat, texts, seeds=seeds, batch_size=1, **kw) == one
    assert replies(chat, texts, seeds=seeds, batch_size=4, **kw) == one
    if temperature:  # the seeds matter: the same request with other seeds gets other answers
        assert len(set(replies(chat, [texts[0]] * 4, seeds=[1, 2, 3, 4], batch_size=4, **kw))) > 1
    assert chat.tokenizer.padding_side == side  # the tokenizer is left as it was for reply() and chat
