"""The base model directory, `results/base_model/`, that training, merging and evaluation read.

Three sources (config `model.source`):

- `tiny`: a Qwen2 of a few layers with random weights and a byte-level BPE tokenizer trained on the
  training text, built offline and deterministically (same seed and text, same files). It is what the
  embedded default trains on CPU: it learns the style, not the language.
- `path`: a local Hugging Face model directory (`model.path`), validated, then linked.
- `modelscope`: `model.modelscope_id`, downloaded with modelscope's `snapshot_download` into modelscope's
  cache (outside `results/`, so deleting `results/` never downloads 15 GB again), then linked.

For `path` and `modelscope`, `results/base_model/` is a directory of symbolic links, one per entry of the
model directory, plus `zhufu_model.json`, which records where the links point. Every consumer (XTuner,
transformers, `zhufu chat`) reads it as an ordinary model directory, and nothing is ever written into the
user's model directory. torch, transformers, tokenizers and modelscope are imported inside the functions
that use them: they take seconds to import, and the `path` source needs none of them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from zhufu.config import load_config
from zhufu.errors import ModelError
from zhufu.io import fresh_dir, read_json, replace_dir, write_json

log = logging.getLogger(__name__)

RECORD = "zhufu_model.json"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# LoRA leaves the embeddings (tied to the output layer) and the final norm frozen, so the logits can only be
# as large as the random embeddings allow: with transformers' default std of 0.02 they stay within about
# ±1.5 and the loss cannot fall far below ln(vocabulary). A wider initialisation lets LoRA learn.
INIT_RANGE = 0.2
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_dir(
    path: str | os.PathLike,
    what: str = "model directory",
    hint: str = "set model.path to a local Hugging Face model directory",
) -> Path:
    """Raise ModelError naming `path` unless it looks like a loadable HF model directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{what} {p} does not exist; {hint}")
    if not p.is_dir():
        raise ModelError(f"{what} {p} is not a directory; {hint}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ModelError(f"{what} {p} is not readable by this user; fix its permissions")
    config = p / "config.json"
    if not config.is_file():
        raise ModelError(f"{what} {p} has no config.json; is it a Hugging Face model directory?")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{what} {p}: config.json cannot be read ({e})") from None
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"{what} {p} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files there"
        )
    return p


def _training_texts(train_json: str | os.PathLike) -> list[str]:
    records = read_json(train_json)
    texts = []
    for rec in records:
        for turn in rec.get("conversation", []):
            texts.extend(turn.get(k) or "" for k in ("system", "input", "output"))
    texts = [t for t in texts if t]
    if not texts:
        raise ModelError(f"{train_json}: no text to train the tiny tokenizer on (is the training set empty?)")
    return texts


# One pre-token per Han character (and per CJK punctuation mark or emoji, which are outside \w): BPE then merges
# only the bytes of one character, never characters into words.
HAN_CHAR = r"[\p{Han}\p{Extended_Pictographic}\u3000-\u303f\uff00-\uffef]"
TOKENIZERS = ("char", "bpe")


def build_tokenizer(texts: list[str], vocab_size: int, kind: str = "char"):
    """A byte-level BPE tokenizer with Qwen's ChatML special tokens, as a transformers fast tokenizer.

    `char`: every Han character, CJK punctuation mark and emoji is a token of its own (a pre-token that BPE
    merges only inside), so 姐姐 in a request and in an answer are the same two tokens, and a recipient or
    a scene can be copied from the request. `bpe`: byte-level BPE over whole runs of Han characters, which
    on this little text merges the request templates with their recipient (送祝福给姐姐 and 我想祝领导 are
    single tokens), so a model must learn every template × recipient token on its own.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    if kind not in TOKENIZERS:
        raise ModelError(f"model.tiny.tokenizer: {kind!r} is not one of {', '.join(TOKENIZERS)}")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "char":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(HAN_CHAR), behavior="isolated"), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Qwen2's class, so that XTuner treats it as Qwen's (no BOS token; eos <|im_end|>).
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML_TEMPLATE.replace("default_system", "'You are a helpful assistant.'"),
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    train_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 2048,
    tokenizer: str = "char",
    seed: int = 0,
) -> Path:
    """Build the tiny Qwen2 and its tokenizer into `out_dir` (replaced whole, never left half-written)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ModelError(
            f"model.tiny: hidden_size ({hidden_size}) must divide by num_heads ({num_heads}), "
            f"and num_heads by num_kv_heads ({num_kv_heads})"
        )
    kind = tokenizer
    tokenizer = build_tokenizer(_training_texts(train_json), vocab_size, kind)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=INIT_RANGE,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False
    )
    out, tmp = fresh_dir(out_dir)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(
        tmp / RECORD,
        {
            "source": "tiny",
            "seed": seed,
            "train_json": str(train_json),
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "tokenizer": kind,
        },
    )
    replace_dir(tmp, out)
    log.info(
        "built tiny Qwen2 (%d layers, hidden %d, vocab %d) in %s",
        num_layers,
        hidden_size,
        len(tokenizer),
        out,
    )
    return out


def link_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Make `out_dir` a directory of links to every entry of `model_dir`, plus a record of the origin."""
    src = check_model_dir(
        model_dir, "model.path" if record.get("source") == "path" else "model directory"
    ).resolve()
    out, tmp = fresh_dir(out_dir)
    tmp.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if entry.name == RECORD:
            continue
        (tmp / entry.name).symlink_to(entry)
    write_json(tmp / RECORD, {**record, "resolved": str(src)})
    replace_dir(tmp, out)
    log.info("linked %s into %s", src, out)
    return out


def download_modelscope(model_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or find in modelscope's cache) `model_id`; return the local snapshot directory."""
    try:
        from modelscope import snapshot_download
    except ImportError as e:
        raise ModelError(f"model.source is modelscope but modelscope cannot be imported ({e})") from None
    try:
        path = snapshot_download(model_id, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # modelscope raises many kinds (HTTP, hub, OS); all mean the same to a user
        raise ModelError(
            f"modelscope could not download {model_id!r} ({type(e).__name__}: {e}); check the id, the network, "
            "or download it yourself and set model.source: path with model.path"
        ) from None
    return Path(path)


def prepare_base_model(
    out_dir: str | os.PathLike,
    *,
    source: str,
    train_json: str | os.PathLike | None = None,
    path: str | None = None,
    modelscope_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    tiny: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Produce `out_dir` from the configured source (see the module docstring)."""
    if source == "tiny":
        if train_json is None:
            raise ModelError("model.source is tiny: a training set is needed to train its tokenizer")
        return build_tiny_model(train_json, out_dir, seed=seed, **(tiny or {}))
    if source == "path":
        if not path:
            raise ModelError("model.source is path but model.path is not set")
        return link_model(path, out_dir, {"source": "path", "path": str(path)})
    if source == "modelscope":
        if not modelscope_id:
            raise ModelError("model.source is modelscope but model.modelscope_id is not set")
        local = download_modelscope(modelscope_id, revision=revision, cache_dir=cache_dir)
        return link_model(
            local, out_dir, {"source": "modelscope", "modelscope_id": modelscope_id, "revision": revision}
        )
    raise ModelError(f"model.source {source!r} is not one of tiny, path, modelscope")


def prepare_from_config(config: dict, out_dir: str | os.PathLike, train_json: str | None = None) -> Path:
    model = config["model"]
    return prepare_base_model(
        out_dir,
        source=model["source"],
        train_json=train_json,
        path=model.get("path"),
        modelscope_id=model.get("modelscope_id"),
        revision=model.get("revision"),
        cache_dir=model.get("cache_dir"),
        tiny=model.get("tiny"),
        seed=config["seed"],
    )


def add_base_model_arguments(parser) -> None:
    parser.add_argument("--config", help="config file (default: the project's config.yaml)")
    parser.add_argument(
        "--train", help="training set, for the tiny model's tokenizer (default: results/data/train.json)"
    )
    parser.add_argument("-o", "--output", default="results/base_model", help="output directory")


def run_base_model(args) -> int:
    config = load_config(args.config)
    out = prepare_from_config(config, args.output, args.train or "results/data/train.json")
    print(out)
    return 0
