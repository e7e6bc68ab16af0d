"""The parts that keep the clean stage linear (issue 24): the compiled record check, the streamed reader, the
capped near-dedup, the streamed JSON writer and the one-regex normalise, each against an oracle that does not
use it (jsonschema, json.loads, brute force, json.dumps, the per-character definition)."""

import copy
import json
import os
import random
import time
from unittest import mock

import jsonschema
import numpy as np
import pytest
import yaml
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from zhufu.data import dedup
from zhufu.data.dedup import _NOT_KEY, lsh_bands, near_duplicates, normalise, shared_buckets, split_components
from zhufu.data.records import read_records, record_check, validate_records
from zhufu.errors import DataError
from zhufu.io import dump_indented, write_json
from zhufu.text import is_emoji

SCHEMA = yaml.safe_load((ROOT / "schemas" / "record.schema.yaml").read_text(encoding="utf-8"))
JSONSCHEMA = jsonschema.Draft202012Validator(SCHEMA)
GOOD = {
    "id": "a1",
    "conversation": [{"system": "S", "input": "祝姐姐生日", "output": "生日快乐！"}],
    "meta": {"recipient": "姐姐", "scene": "生日", "style": "正常", "round": 0, "provider": "offline",
             "model": "m", "prompt": "p", "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
}  # fmt: skip
ODD_VALUES = [None, True, False, 0, -1, 1.0, 2.5, "", "x", [], [{}], {}, {"x": 1}, -0.5]


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


@st.composite
def mutated_records(draw):
    """A valid record with a few keys deleted, replaced by odd values, or added."""
    record = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(list(paths(record))[1:]))
        parent = record
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            # a copy: a later step may edit inside it, and ODD_VALUES must stay as it is for the next example
            parent[draw(st.sampled_from(["extra", "rule_set", "usage", "id"]))] = copy.deepcopy(
                draw(st.sampled_from(ODD_VALUES))
            )
        else:
            parent[where[-1]] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
    return record


def jsonschema_message(record):
    """The first error as validate_records words it, computed with jsonschema alone."""
    errors = sorted(JSONSCHEMA.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return None
    path = "/".join(str(p) for p in errors[0].absolute_path)
    return f"f.json: record 1: {errors[0].message}" + (f" (at {path})" if path else "")


@settings(max_examples=400, deadline=None)
@given(mutated_records())
def test_the_compiled_check_passes_only_records_jsonschema_accepts_and_errors_are_its_own(record):
    expected = jsonschema_message(record)
    if record_check()(record):
        assert expected is None, expected
    if expected is None:
        assert validate_records([GOOD, record], "f.json")[1] is record
    else:
        with pytest.raises(DataError) as e:
            validate_records([GOOD, record], "f.json")
        assert str(e.value) == expected


def test_the_compiled_check_passes_the_common_shape():
    # the fast path is taken (else it would not be one): a valid record never reaches jsonschema
    assert record_check()(GOOD)
    assert record_check()({**GOOD, "meta": {**GOOD["meta"], "rule_set": None, "usage": None, "prompt": None}})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text('ab祝🎂\n"\\ ', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("ab", max_size=2), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.just(GOOD) | JSON_VALUES, max_size=5),
    st.sampled_from([None, 0, 1, 2]),
    st.integers(1, 40),
    st.integers(0, 200),
    st.booleans(),
)
def test_the_streamed_reader_reads_what_json_loads_reads(
    tmp_path_factory, value, indent, chunk, cut, truncate
):
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    if truncate:
        text = text[: cut % (len(text) + 1)]
    path = tmp_path_factory.mktemp("r") / "m.json"
    path.write_text(text, encoding="utf-8")
    try:
        expected = json.loads(text)
    except json.JSONDecodeError as e:
        expected = DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    if not isinstance(expected, Exception):
        try:
            validate_records(expected, path)
        except DataError as e:
            expected = e
    if isinstance(expected, Exception):
        with pytest.raises(DataError) as e:
            read_records(path, chunk_chars=chunk)
        assert str(e.value) == str(expected)
    else:  # a well-formed list is streamed, never read whole
        with mock.patch("zhufu.data.records.read_json", side_effect=AssertionError("read whole")):
            assert read_records(path, chunk_chars=chunk) == expected


def test_the_streamed_reader_shares_equal_strings_between_records(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "id": "b"}]), encoding="utf-8")
    a, b = read_records(path, chunk_chars=7)
    assert a["meta"]["prompt"] is b["meta"]["prompt"] and a == GOOD and b["id"] == "b"


# ---- near-dedup against brute force


def grams(text, n=3):
    return {text[i : i + n] for i in range(len(text) - n + 1)} if len(text) > n else {text}


def oracle(texts, threshold=0.8, num_perm=64, seed=1):
    """Greedy near-dedup in full: each text against every earlier kept text that shares an LSH band
    (datasketch's own MinHash), dropped at the best exact Jaccard >= threshold (the earliest on a tie)."""
    import xxhash
    from datasketch import MinHash

    bands, rows = lsh_bands(threshold, num_perm)
    sigs = []
    for t in texts:
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        m.update_batch([g.encode() for g in grams(t)])
        sigs.append([tuple(m.hashvalues[b * rows : (b + 1) * rows]) for b in range(bands)])
    kept, dups = [], {}
    for i, t in enumerate(texts):
        best = None
        for j in kept:
            if any(a == b for a, b in zip(sigs[i], sigs[j], strict=True)):
                jac = len(grams(t) & grams(texts[j])) / len(grams(t) | grams(texts[j]))
                if jac >= threshold and (best is None or jac > best[1]):
                    best = (j, jac)
        if best:
            dups[i] = best
        else:
            kept.append(i)
    return dups


@st.composite
def near_alike_texts(draw):
    """A few base texts and many copies of them with a character or two changed, inserted or appended."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    bases = ["".join(rng.choice("祝你生日快乐新年万事如意心想事成步步高升") for _ in range(rng.randint(3, 30)))
             for _ in range(draw(st.integers(1, 4)))]  # fmt: skip
    texts = []
    for _ in range(draw(st.integers(1, 40))):
        chars = list(rng.choice(bases))
        for _ in range(rng.randint(0, 2)):
            chars.insert(rng.randint(0, len(chars)), rng.choice("的了呀哦啦"))
        texts.append("".join(chars))
    return texts


@settings(max_examples=60, deadline=None)
@given(near_alike_texts())
def test_near_dedup_below_its_caps_keeps_what_brute_force_keeps(texts):
    assert near_duplicates(texts, 3, 0.8, 64, bucket_cap=10**6, verify_cap=10**6) == oracle(texts)
    found = near_duplicates(texts, 3, 0.8, 64)  # the default caps: these inputs stay below them
    assert found == oracle(texts)


@settings(max_examples=30, deadline=None)
@given(near_alike_texts(), st.integers(1, 3), st.integers(1, 3))
def test_capped_near_dedup_drops_only_texts_with_a_kept_near_twin(texts, bucket_cap, verify_cap):
    found = near_duplicates(texts, 3, 0.8, 64, bucket_cap=bucket_cap, verify_cap=verify_cap)
    for i, (j, jac) in found.items():
        assert j < i and j not in found
        assert len(grams(texts[i]) & grams(texts[j])) / len(grams(texts[i]) | grams(texts[j])) == jac >= 0.8


def test_capped_near_dedup_still_finds_the_closest_twin_in_a_full_bucket():
    """200 near-alike texts fill their buckets; a later exact copy of the last kept one (Jaccard 1) must
    still be found through the signature ranking, not lost behind the bucket cap."""
    rng = random.Random(5)
    base = [chr(0x4E00 + rng.randrange(3000)) for _ in range(40)]
    texts = []
    for _ in range(200):
        t = list(base)
        for _ in range(3):
            t.insert(rng.randint(0, len(t)), chr(0x4E00 + rng.randrange(3000)))
        texts.append("".join(t))
    texts.append(texts[3] + "的")
    full = near_duplicates(texts, 3, 0.8, 64, bucket_cap=10**6, verify_cap=10**6)
    found = near_duplicates(texts, 3, 0.8, 64, bucket_cap=64, verify_cap=4)
    assert len(texts) - len(full) > 64  # more kept texts than a bucket holds: the caps are reached
    assert 200 in found and found[200][1] >= 0.9


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers() | st.booleans() | st.none() | st.floats(), inner, max_size=4),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 0, 1, 2, "\t"]))
def test_write_json_writes_what_json_dumps_writes_byte_for_byte(tmp_path_factory, value, indent):
    """train.json and the clean report are written in pieces as they are encoded (at 1M records each was a
    string of hundreds of megabytes): the file is still json.dumps's text, for any JSON value."""
    path = tmp_path_factory.mktemp("w") / "out.json"
    write_json(path, value, indent=indent)
    assert path.read_text(encoding="utf-8") == json.dumps(value, ensure_ascii=False, indent=indent) + "\n"


def test_write_json_writes_a_generator_as_its_list_in_pieces(tmp_path):
    """train.json's rows come from a generator, and a long list is handed to the file in several writes."""
    rows = [
        {"conversation": [{"system": "s", "input": f"祝{k}", "output": '"新年"快乐\n😀'}]} for k in range(3)
    ]
    nested = {"rows": rows, "empty": [], "none": {}, "n": [1, 2.5, None, True]}
    pieces: list[str] = []
    dump_indented({**nested, "rows": (r for r in rows), "empty": (r for r in [])}, " ", pieces.append, 4)
    assert "".join(pieces) == json.dumps(nested, ensure_ascii=False, indent=1)
    assert len(pieces) > 1
    write_json(tmp_path / "train.json", (r for r in rows), indent=1)
    assert json.loads((tmp_path / "train.json").read_text(encoding="utf-8")) == rows


def test_normalise_keeps_exactly_the_alphanumeric_characters_that_are_not_emoji():
    """The one-regex normalise against its definition, over every code point."""
    chars = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    expected = "".join(ch for ch in chars if ch.isalnum() and not is_emoji(ch))
    assert _NOT_KEY.sub("", chars) == expected
    assert normalise("Ｈｉ，祝你_生日快乐！🎂①") == "hi祝你生日快乐1"


def test_shared_buckets_number_only_the_band_keys_two_rows_share():
    keys = np.array([[5, 7], [5, 8], [6, 7], [9, 7]], dtype=np.uint64)
    assert shared_buckets(keys).tolist() == [[0, 1], [0, -1], [-1, 1], [-1, 1]]
    keys = np.array([[5, 5], [5, 5], [1, 2]], dtype=np.uint64)  # the same key in two bands: two buckets
    assert shared_buckets(keys).tolist() == [[0, 1], [0, 1], [-1, -1]]


@settings(max_examples=30, deadline=None)
@given(near_alike_texts(), st.integers(1, 3), st.integers(1, 3), st.integers(2, 4))
def test_near_dedup_in_worker_processes_finds_what_one_process_finds(texts, bucket_cap, verify_cap, workers):
    """The verification split across forked workers by connected components gives the single-process
    result exactly (the caps reached or not), down to the twin each duplicate names and its Jaccard."""
    one = near_duplicates(texts, 3, 0.8, 64, bucket_cap=bucket_cap, verify_cap=verify_cap)
    with mock.patch("zhufu.data.dedup.PARALLEL_MIN_ROWS", 0):
        split = near_duplicates(
            texts, 3, 0.8, 64, bucket_cap=bucket_cap, verify_cap=verify_cap, workers=workers
        )
    assert list(split.items()) == list(one.items())


def test_near_dedup_verifies_in_as_many_processes_as_it_is_given(tmp_path):
    """Many unrelated groups of near-alike texts: split_components makes two bins, and the two are verified
    in two other processes (each one's pid written by the part it ran), not in this one."""
    rng = random.Random(7)
    texts = []
    for _ in range(40):
        base = [chr(0x4E00 + rng.randrange(3000)) for _ in range(30)]
        for _ in range(5):
            t = list(base)
            t.insert(rng.randint(0, len(t)), chr(0x4E00 + rng.randrange(3000)))
            texts.append("".join(t))
    rng.shuffle(texts)
    pids = tmp_path / "pids"
    run = dedup._VerifyJob.run

    def recording(self, rows):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        # hold this bin until another process has one too (or 30 s): on a loaded machine a pool process that
        # finished its bin early could otherwise take the second before its sibling started (a race, not the
        # split under test); one process running both bins still writes one pid and fails below
        deadline = time.monotonic() + 30
        while len(set(pids.read_text().split())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return run(self, rows)

    with (
        mock.patch("zhufu.data.dedup.PARALLEL_MIN_ROWS", 0),
        mock.patch.object(dedup._VerifyJob, "run", recording),
    ):
        split = near_duplicates(texts, 3, 0.8, 64, workers=2)
    seen = pids.read_text().split()
    assert len(set(seen)) == 2 and str(os.getpid()) not in seen
    assert split == near_duplicates(texts, 3, 0.8, 64) and len(split) >= 40


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 12), min_size=3, max_size=3), max_size=40), st.integers(1, 4))
def test_components_keep_the_rows_that_share_a_bucket_together(rows, parts):
    groups = np.array(rows, dtype=np.int64).reshape(-1, 3)
    bins = split_components(groups, parts)
    bin_of = {int(i): b for b, part in enumerate(bins) for i in part}
    linked = [i for i, r in enumerate(rows) if any(g >= 0 for g in r)]
    assert sorted(bin_of) == linked and len(bin_of) == sum(len(p) for p in bins)  # each linked row once
    assert all(list(p) == sorted(p) for p in bins) and len(bins) <= parts and all(len(p) for p in bins)
    for i in linked:
        for j in linked:
            if set(rows[i]) & set(rows[j]) - {-1}:
                assert bin_of[i] == bin_of[j], (i, j)
