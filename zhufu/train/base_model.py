"""The base model directory, `results/base_model/`, that training, merging and evaluation read.

Three sources (config `model.source`):

- `tiny`: a model of a few layers with random weights and a tokenizer trained on the training text, built
  offline and deterministically (same seed and text, same files). It is what the embedded default trains on
  CPU: it learns the style, not the language. `model.tiny.architecture` picks the family:
  - `qwen2`: transformers' own Qwen2 with a byte-level BPE tokenizer and ChatML (`qwen_chat`);
  - `internlm2`: laid out as a real internlm2-chat snapshot is: `config.json` with `auto_map`, InternLM2's
    modeling files beside it (copied, when the model is built, from the ones the installed xtuner wheel
    ships; loaded with `trust_remote_code`), a sentencepiece `tokenizer.model` with InternLM2's special
    tokens, and no `tokenizer.json`, so transformers converts the sentencepiece model to a fast tokenizer
    on every load, as it does for internlm2-chat-7b (that conversion needs protobuf).
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
import shutil
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


ARCHITECTURES = ("qwen2", "internlm2")
# InternLM2's Hugging Face files as the installed xtuner wheel ships them (no package ships its
# tokenization_internlm2*.py, so the tiny snapshot's tokenizer is transformers' LlamaTokenizerFast over a
# sentencepiece model, which goes through the same sentencepiece → fast conversion).
INTERNLM2_CODE = ("xtuner._lite.modelings.internlm2", ("configuration_internlm2.py", "modeling_internlm2.py"))
INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
# internlm2-chat-7b's own chat template and special tokens (its tokenizer_config.json).
INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
INTERNLM2_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>"]


def build_tiny_model(
    train_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    architecture: str = "qwen2",
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 2048,
    tokenizer: str = "char",
    seed: int = 0,
) -> Path:
    """Build the tiny model and its tokenizer into `out_dir` (replaced whole, never left half-written)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if architecture not in ARCHITECTURES:
        raise ModelError(
            f"model.tiny.architecture: {architecture!r} is not one of {', '.join(ARCHITECTURES)}"
        )
    if tokenizer not in TOKENIZERS:
        raise ModelError(f"model.tiny.tokenizer: {tokenizer!r} is not one of {', '.join(TOKENIZERS)}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ModelError(
            f"model.tiny: hidden_size ({hidden_size}) must divide by num_heads ({num_heads}), "
            f"and num_heads by num_kv_heads ({num_kv_heads})"
        )
    texts = _training_texts(train_json)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        initializer_range=INIT_RANGE,
    )
    out, tmp = fresh_dir(out_dir)
    tmp.mkdir(parents=True)
    write = _write_tiny_qwen2 if architecture == "qwen2" else _write_tiny_internlm2
    parameters, vocab = write(tmp, texts, shape, tokenizer, seed)
    write_json(
        tmp / RECORD,
        {
            "source": "tiny",
            "architecture": architecture,
            "seed": seed,
            "train_json": str(train_json),
            "parameters": parameters,
            "vocab_size": vocab,
            "tokenizer": tokenizer,
        },
    )
    replace_dir(tmp, out)
    log.info(
        "built tiny %s (%d layers, hidden %d, vocab %d) in %s",
        architecture,
        num_layers,
        hidden_size,
        vocab,
        out,
    )
    return out


def _write_tiny_qwen2(tmp: Path, texts: list[str], shape: dict, kind: str, seed: int) -> tuple[int, int]:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(texts, shape["vocab_size"], kind)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        **{**shape, "vocab_size": len(tokenizer)},
        tie_word_embeddings=True,
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
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters()), len(tokenizer)


def build_sentencepiece(texts: list[str], out: Path, vocab_size: int, kind: str = "char") -> None:
    """Train a sentencepiece BPE model on `texts` into `out` (tokenizer.model), with InternLM2's ids.

    Like InternLM2's: <unk> 0, <s> 1, </s> 2, byte fallback for characters the text never had, no dummy
    prefix, whitespace kept, and the chat special tokens as single pieces. `char`: pieces are single
    characters (max_sentencepiece_length 1), so a recipient in the request is the same tokens in the
    answer (see build_tokenizer); `bpe`: sentencepiece's usual merges.
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a per-character vocabulary is smaller than the limit
        max_sentencepiece_length=1 if kind == "char" else 16,
        character_coverage=1.0,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        user_defined_symbols=INTERNLM2_SPECIAL_TOKENS,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic: the same text gives the same model
        minloglevel=2,
    )
    out.write_bytes(model.getvalue())


def _write_tiny_internlm2(
    tmp: Path,
    texts: list[str],
    shape: dict,
    kind: str,
    seed: int,
    *,
    device: str = "cpu",
    torch_dtype: str = "float32",
) -> tuple[int, int]:
    """An InternLM2 snapshot of `shape` with random weights into `tmp` (bench/gpu_qlora.py builds the 7B
    shape with it, on the GPU in float16); returns (parameters, vocabulary size)."""
    import importlib.util

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    package, files = INTERNLM2_CODE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.tiny.architecture internlm2: {package} is not installed (it comes with xtuner 0.2.0)"
        )
    code_dir = Path(next(iter(spec.submodule_search_locations)))
    for name in files:
        shutil.copyfile(code_dir / name, tmp / name)
    build_sentencepiece(texts, tmp / "tokenizer.model", shape["vocab_size"], kind)
    write_json(
        tmp / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "</s>",
            "additional_special_tokens": INTERNLM2_SPECIAL_TOKENS,
            "add_bos_token": True,
            "add_eos_token": False,
            "add_prefix_space": False,  # InternLM2's sentencepiece model adds no dummy prefix
            "legacy": True,
            "chat_template": INTERNLM2_CHAT_TEMPLATE,
            "model_max_length": 2048,
            "clean_up_tokenization_spaces": False,
        },
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    write_json(
        tmp / "config.json",
        {
            **{k: v for k, v in shape.items() if k != "padded_vocab_size"},
            # the tokenizer's own size; a bench of the real shape pads it to the real vocabulary
            "vocab_size": max(len(tokenizer), shape.get("padded_vocab_size") or 0),
            "architectures": ["InternLM2ForCausalLM"],
            "auto_map": INTERNLM2_AUTO_MAP,
            "model_type": "internlm2",
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000,
            "rope_scaling": None,
            "bias": False,
            "tie_word_embeddings": False,
            # internlm2-chat-7b's config asks for eager attention; sdpa is the same attention in one kernel,
            # 3× faster at the profiles' 2048 tokens on a CPU (0.65 s against 2.0 s a step here)
            "attn_implementation": "sdpa",
            "use_cache": True,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": eos,
            "torch_dtype": torch_dtype,
        },
    )
    config = AutoConfig.from_pretrained(str(tmp), trust_remote_code=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=True, torch_dtype=getattr(torch, torch_dtype)
        )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[eos, im_end], pad_token_id=eos, do_sample=False
    )
    model.config.name_or_path = ""  # not the temporary directory: the same seed and text give the same files
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    return sum(p.numel() for p in model.parameters()), len(tokenizer)


def build_internlm2(
    texts: list[str],
    out_dir: str | os.PathLike,
    shape: dict,
    *,
    seed: int = 0,
    device: str = "cpu",
    torch_dtype: str = "float32",
) -> Path:
    """An InternLM2 snapshot of any `shape` (config.json keys: hidden_size, num_hidden_layers, vocab_size,
    ...) with random weights and a tokenizer trained on `texts` (its vocabulary padded to the shape's),
    laid out as the tiny one is; replaced whole."""
    out, tmp = fresh_dir(out_dir)
    tmp.mkdir(parents=True)
    full = {
        "initializer_range": 0.02,
        **shape,
        "vocab_size": 2048,
        "padded_vocab_size": shape.get("vocab_size"),
    }
    _write_tiny_internlm2(tmp, texts, full, "char", seed, device=device, torch_dtype=torch_dtype)
    replace_dir(tmp, out)
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
