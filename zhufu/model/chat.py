"""`zhufu chat`: ask a model for a blessing, once or interactively.

Works on a merged model directory, or on a base model plus `--adapter DIR` (a LoRA adapter from
pth-to-hf). Interactive mode keeps no history by default: every line is a fresh request, so no RESET
dance is needed between blessings (`--history` keeps the conversation instead).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhufu.errors import ModelError
from zhufu.tianji import TIANJI_SYSTEM
from zhufu.train.base_model import check_model_dir

log = logging.getLogger(__name__)

# XTuner's qwen_chat / internlm2_chat layout, for tokenizers that carry no chat template.
CHATML = {
    "system": "<|im_start|>system\n{}<|im_end|>\n",
    "user": "<|im_start|>user\n{}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{}<|im_end|>\n",
}


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    device: str
    stop_ids: list[int] = field(default_factory=list)


def load_chat_model(path: str | os.PathLike, adapter: str | os.PathLike | None = None) -> ChatModel:
    """Load a model directory (and optionally a LoRA adapter on top) for generation."""
    check_model_dir(
        path, "model directory", "pass a model directory, e.g. results/model/merged (make run writes it)"
    )
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(
            f"adapter {adapter} has no adapter_config.json; pass the output of `zhufu pth-to-hf`"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "auto" if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, trust_remote_code=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.to(device).eval()
    stop_ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            stop_ids.add(tid)
    return ChatModel(model, tokenizer, device, sorted(i for i in stop_ids if i is not None))


def build_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "".join(CHATML[m["role"]].format(m["content"]) for m in messages)
    return text + "<|im_start|>assistant\n"


# nucleus sampling's top_p, whenever an answer is sampled (reply, replies)
TOP_P = 0.9


def request_prompt(tokenizer, text: str, *, system: str, history: list[dict[str, str]] | None = None) -> str:
    """The prompt of one request: the system turn (when there is one), the history, the user's text."""
    messages = [{"role": "system", "content": system}] if system else []
    return build_prompt(tokenizer, messages + list(history or []) + [{"role": "user", "content": text}])


def _generate_kwargs(
    chat: ChatModel,
    text: str,
    *,
    system: str,
    history: list[dict[str, str]] | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """The arguments of model.generate for one answer: greedy at temperature 0, else seeded sampling."""
    import torch  # heavy: only the commands that generate load it

    prompt = request_prompt(chat.tokenizer, text, system=system, history=history)
    ids = chat.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(chat.device)
    if temperature > 0:
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": TOP_P}
    else:
        sampling = {"do_sample": False}
    return dict(
        **ids,
        max_new_tokens=max_new_tokens,
        eos_token_id=chat.stop_ids,
        pad_token_id=chat.tokenizer.pad_token_id or chat.stop_ids[0],
        **sampling,
    )


def reply(
    chat: ChatModel,
    text: str,
    *,
    system: str = TIANJI_SYSTEM,
    history: list[dict[str, str]] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """One answer; greedy when temperature is 0 (the default), so the same question gets the same answer."""
    import torch

    kwargs = _generate_kwargs(
        chat,
        text,
        system=system,
        history=history,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    with torch.no_grad():
        out = chat.model.generate(**kwargs)
    answer = chat.tokenizer.decode(out[0, kwargs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answer.strip()


def replies(
    chat: ChatModel,
    texts: list[str],
    *,
    seeds: list[int],
    system: str = TIANJI_SYSTEM,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    batch_size: int = 16,
) -> list[str]:
    """`reply` to each of `texts` (each with its own seed), `batch_size` requests to one generate call.

    The prompts are padded on the left and decoded together, so a model answers many requests in about
    the time of one (the evaluation's 276 answers of the tiny model: 56 s one at a time). Sampling stays
    seeded per answer: each row draws its tokens from its own generator, seeded with its seed, through the
    warpers `reply` samples with (temperature, top_k, TOP_P), so a batch of one gives `reply`'s answer
    token for token; in a larger batch the padded rows' logits can differ from it in the last float bits.
    Greedy at temperature 0.
    """
    import torch

    if len(seeds) != len(texts):
        raise ValueError(f"replies: {len(texts)} texts but {len(seeds)} seeds")
    tok = chat.tokenizer
    prompts = [request_prompt(tok, t, system=system) for t in texts]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else chat.stop_ids[0]
    side, pad = tok.padding_side, tok.pad_token
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    answers: list[str] = []
    try:
        for lo in range(0, len(prompts), batch_size):
            batch = tok(
                prompts[lo : lo + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(chat.device)
            processors = []
            if temperature > 0:
                processors = [_row_sampler(chat, seeds[lo : lo + batch_size], temperature)]
            with torch.no_grad():
                out = chat.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=chat.stop_ids,
                    pad_token_id=pad_id,
                    do_sample=False,  # the row samplers have chosen each token already: greedy takes it
                    logits_processor=processors,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [a.strip() for a in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side, tok.pad_token = side, pad
    return answers


def _row_sampler(chat: ChatModel, seeds: list[int], temperature: float):
    """A logits processor that samples each row's next token with its own torch.Generator (seeded with the
    row's seed) and leaves only that token possible, so that greedy decoding takes it."""
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    top_k = getattr(chat.model.generation_config, "top_k", None)
    warpers = [TemperatureLogitsWarper(temperature)]
    warpers += [TopKLogitsWarper(top_k)] if top_k else []
    warpers += [TopPLogitsWarper(TOP_P)]

    class RowSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator(chat.device).manual_seed(s) for s in seeds]

        def __call__(self, input_ids, scores):
            for warp in warpers:
                scores = warp(input_ids, scores)
            probs = torch.softmax(scores, dim=-1)
            picks = torch.cat(
                [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
            )
            only = torch.full_like(scores, float("-inf"))
            return only.scatter_(1, picks[:, None], 0.0)

    return RowSampler()


def reply_stream(
    chat: ChatModel,
    text: str,
    *,
    system: str = TIANJI_SYSTEM,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
):
    """The answer of `reply`, yielded in pieces as it is generated (transformers' TextIteratorStreamer)."""
    import torch
    from transformers import TextIteratorStreamer  # heavy: as torch

    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    kwargs = _generate_kwargs(
        chat,
        text,
        system=system,
        history=None,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    kwargs["streamer"] = streamer

    def run():
        with torch.no_grad():
            chat.model.generate(**kwargs)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        worker.join()


def interactive(chat: ChatModel, *, keep_history: bool, stdin=None, stdout=None, **kwargs) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    tty = stdin.isatty()
    history: list[dict[str, str]] = []
    if tty:
        mode = "the conversation is kept" if keep_history else "each line is a new request"
        print(f"zhufu chat: type a request ({mode}); an empty line or Ctrl-D quits.", file=stdout)
    while True:
        if tty:
            print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or not line.strip() or line.strip() in ("exit", "quit"):
            break
        text = line.strip()
        answer = reply(chat, text, history=history if keep_history else None, **kwargs)
        print(answer, file=stdout, flush=True)
        if keep_history:
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def add_chat_arguments(parser) -> None:
    parser.add_argument(
        "model", nargs="?", default="results/model/merged", help="model directory (merged, or base)"
    )
    parser.add_argument(
        "text", nargs="?", help="one request, answered once; without it, read requests from stdin"
    )
    parser.add_argument("--adapter", help="a LoRA adapter directory to apply on top of MODEL")
    parser.add_argument("--system", default=TIANJI_SYSTEM, help="system prompt (default: Tianji's)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    parser.add_argument("--history", action="store_true", help="interactive: keep the conversation")


def run_chat(args) -> int:
    chat = load_chat_model(args.model, args.adapter)
    kwargs = dict(
        system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    if args.text:
        print(reply(chat, args.text, **kwargs))
    else:
        interactive(chat, keep_history=args.history, **kwargs)
    return 0
