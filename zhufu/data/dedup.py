"""The set rules of cleaning: exact and near-duplicate texts, found on a normalised key of each text.

The first record of each group stays, in merged order. Near duplicates are found with MinHash LSH over
character n-grams, banded for recall (lsh_bands), and confirmed with the exact Jaccard of the two n-gram sets;
the candidates of a row are capped, so the work grows with the rows, not with rows times bucket sizes.
"""

from __future__ import annotations

import heapq
import multiprocessing
import re
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache

import numpy as np
import xxhash
from datasketch import MinHash

from zhufu.text import EMOJI_BASE

# what normalise removes, in one C-level pass: \W and _ are exactly the characters for which str.isalnum()
# is False (re's word characters are isalnum() and _), and is_emoji of one character is its class EMOJI_BASE
_NOT_KEY = re.compile(f"[\\W_{EMOJI_BASE}]+")


def normalise(text: str) -> str:
    """The dedup key of a text: NFKC, lower case, only letters, digits and Han (no punctuation, emoji, space):
    the characters `ch.isalnum() and not is_emoji(ch)`."""
    return _NOT_KEY.sub("", unicodedata.normalize("NFKC", text).lower())


def shingles(key: str, n: int) -> set[bytes]:
    """Character n-grams of a normalised text (the whole text when it is shorter than n)."""
    if len(key) <= n:
        return {key.encode("utf-8")}
    return {key[i : i + n].encode("utf-8") for i in range(len(key) - n + 1)}


def _grams(key: str, n: int) -> set[str]:
    """shingles as str (the same sets, one to one; no encoding, for the Jaccard checks)."""
    if len(key) <= n:
        return {key}
    return {key[i : i + n] for i in range(len(key) - n + 1)}


def exact_duplicates(keys: list[str]) -> dict[int, int]:
    """index -> index of the first record with the same normalised text."""
    first: dict[str, int] = {}
    dups: dict[int, int] = {}
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            dups[i] = j
    return dups


def minhash_signatures(sets, num_perm: int, seed: int, chunk_rows: int = 4096):
    """MinHash signatures (rows × num_perm, uint32) of byte-string sets, computed in bulk with numpy.

    Bit for bit what datasketch's MinHash(num_perm, seed, hashfunc=xxh32) gives after update_batch (the
    "affine32" scheme: MurmurHash3 finalizer, then a·h + b mod 2^32 per permutation), without building a
    Python object per row.
    """
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    a, b = a.astype(np.uint32), b.astype(np.uint32)
    h32 = xxhash.xxh32_intdigest
    out: list = []
    rows = iter(sets)
    while True:
        block = [row for _, row in zip(range(chunk_rows), rows, strict=False)]
        if not block:
            break
        lengths = np.fromiter((len(r) for r in block), dtype=np.int64, count=len(block))
        hv = np.fromiter((h32(x) for r in block for x in r), dtype=np.uint32, count=int(lengths.sum()))
        hv ^= hv >> np.uint32(16)
        hv *= np.uint32(0x85EBCA6B)
        hv ^= hv >> np.uint32(13)
        hv *= np.uint32(0xC2B2AE35)
        hv ^= hv >> np.uint32(16)
        permuted = hv[:, None] * a[None, :] + b[None, :]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        out.append(np.minimum.reduceat(permuted, starts, axis=0))
    return np.concatenate(out) if out else np.zeros((0, num_perm), dtype=np.uint32)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance that two sets at this Jaccard share at least one LSH band of `rows` MinHash values."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99, margin: float = 0.03) -> tuple[int, int]:
    """(bands, rows per band) such that a pair at Jaccard threshold + margin is an LSH candidate with at least
    `recall` probability, and, among those, the fewest false candidates below the threshold.

    datasketch's own choice weighs false positives and negatives equally (threshold 0.8, 64 permutations:
    5 bands of 11, so a pair at 0.86 is a candidate only 68% of the time). Every candidate here is confirmed
    by its exact Jaccard, so a false candidate costs one set comparison and a missed one a duplicate kept.
    """
    target = min(threshold + margin, 1.0)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            if candidate_probability(target, bands, rows) < recall:
                continue
            # false-candidate area under the threshold (midpoint rule)
            fp = sum(candidate_probability((k + 0.5) / 200 * threshold, bands, rows) for k in range(200))
            if best is None or fp < best[0]:
                best = (fp, bands, rows)
            break  # more bands with these rows only add false candidates
    if best is None:
        raise ValueError(f"no LSH bands of {num_perm} permutations reach recall {recall} at {target}")
    return best[1], best[2]


def band_keys(signatures, bands: int, rows: int):
    """(rows × bands) uint64: one hash per LSH band of each MinHash signature, computed in bulk.

    Two rows share a band when their `rows` MinHash values in it are all equal; the 64-bit mix of those
    values stands for them (a collision only costs one exact Jaccard check, since candidates are confirmed).
    """
    out = np.zeros((len(signatures), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(signatures), 0x9E3779B97F4A7C15, dtype=np.uint64)
            for c in range(b * rows, (b + 1) * rows):
                h = (h ^ signatures[:, c].astype(np.uint64)) * np.uint64(0x100000001B3)
                h ^= h >> np.uint64(29)
            out[:, b] = h
    return out


def near_duplicates(
    keys: list[str],
    ngram: int,
    threshold: float,
    num_perm: int,
    seed: int = 1,
    recall: float = 0.99,
    recall_margin: float = 0.03,
    bucket_cap: int = 64,
    verify_cap: int = 32,
    workers: int = 1,
    chunk_rows: int = 1 << 16,
    cache_rows: int = 1 << 16,
) -> dict[int, tuple[int, float]]:
    """index -> (index of an earlier kept record, Jaccard) for near-duplicates of short texts.

    MinHash signatures over character n-grams (bit for bit datasketch's) are cut into LSH bands chosen for
    recall (lsh_bands); rows that share a band are candidates, and a candidate is confirmed with the exact
    Jaccard of the two n-gram sets, so false candidates drop nothing. A record is compared with earlier kept
    records only, so the first of each group stays; of several at threshold, the highest Jaccard (the
    earliest on a tie). The band index is a dict per band rather than datasketch's MinHashLSH, whose per-row
    byte swapping and storage calls took 10 of 16 s at 100k rows.

    Bounded work per row, so the stage grows with its input: a bucket holds at most `bucket_cap` kept rows
    (one answer in many near-alike forms fills its buckets, and comparing each row with all of them made
    the stage quadratic), and of more than `verify_cap` candidates only the `verify_cap` whose signatures
    agree most with the row's (all compared at once in numpy) are verified exactly. Below the caps this is
    the full comparison with every LSH candidate.

    With `workers` > 1 the verification runs in that many forked processes, each over whole connected
    components of the row-bucket graph (components): a row's candidates all share a bucket with it, so
    rows of different components never meet, and each component seen in row order gives exactly the
    single-process result.
    """
    signatures = minhash_signatures((shingles(k, ngram) for k in keys), num_perm, seed)
    bands, rows = lsh_bands(threshold, num_perm, recall, recall_margin)
    groups = shared_buckets(band_keys(signatures, bands, rows))
    job = _VerifyJob(
        keys, signatures, groups, ngram, threshold, bucket_cap, verify_cap, chunk_rows, cache_rows
    )
    parts = split_components(groups, workers) if workers > 1 and len(keys) >= PARALLEL_MIN_ROWS else []
    if len(parts) < 2:
        return job.run(None)
    global _JOB
    _JOB = job  # what the forked workers read (copy-on-write), never pickled
    try:
        with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("fork")) as pool:
            found = list(pool.map(_run_part, parts))
    finally:
        _JOB = None
    return dict(sorted(item for part in found for item in part.items()))


# Fewer rows than this are verified in the calling process: forking and collecting cost more than they save.
PARALLEL_MIN_ROWS = 10_000
_JOB = None


def _run_part(rows):
    return _JOB.run(rows)


class _VerifyJob:
    """The sequential verification of near_duplicates over all rows, or over some rows in their order."""

    def __init__(
        self, keys, signatures, groups, ngram, threshold, bucket_cap, verify_cap, chunk_rows, cache_rows
    ):
        self.keys, self.signatures, self.groups = keys, signatures, groups
        self.ngram, self.threshold = ngram, threshold
        self.bucket_cap, self.verify_cap = bucket_cap, verify_cap
        self.chunk_rows, self.cache_rows = chunk_rows, cache_rows

    def run(self, rows) -> dict[int, tuple[int, float]]:
        """Near-duplicates among `rows` (ascending indexes; None: all rows)."""
        keys, signatures, groups, ngram = self.keys, self.signatures, self.groups, self.ngram
        threshold, bucket_cap, verify_cap = self.threshold, self.bucket_cap, self.verify_cap
        # bucket id -> the kept rows in it (at most bucket_cap), for the buckets that two or more rows share
        index: dict[int, list[int]] = {}
        # n-gram sets are rebuilt when needed rather than all kept (at 1M rows they would cost gigabytes); the
        # cache holds the texts that keep turning up as candidates
        grams = lru_cache(maxsize=self.cache_rows)(lambda j: _grams(keys[j], ngram))
        dups: dict[int, tuple[int, float]] = {}
        rows = np.arange(len(keys)) if rows is None else rows
        for lo in range(0, len(rows), self.chunk_rows):
            ids = rows[lo : lo + self.chunk_rows].tolist()
            for i, row_keys in zip(ids, groups[ids].tolist(), strict=True):
                row_keys = [g for g in row_keys if g >= 0]
                if not row_keys:  # no band shared with any other row: no candidate now, none for a later row
                    continue
                candidates: set[int] = set()
                for g in row_keys:
                    hit = index.get(g)
                    if hit:
                        candidates.update(hit)
                best: tuple[int, float] | None = None
                if candidates:
                    if len(candidates) > verify_cap:
                        # the ones whose MinHash signatures agree most with this row's (C-level, all at once)
                        among = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
                        agree = np.count_nonzero(signatures[among] == signatures[i], axis=1)
                        candidates = among[np.argsort(-agree, kind="stable")[:verify_cap]].tolist()
                    mine = _grams(keys[i], ngram)
                    size = len(mine)
                    for j in sorted(candidates):
                        theirs = grams(j)
                        common = len(mine & theirs)
                        jac = common / (size + len(theirs) - common)
                        if jac >= threshold and (best is None or jac > best[1]):
                            best = (j, jac)
                if best is not None:
                    dups[i] = best
                else:
                    for g in row_keys:
                        hit = index.setdefault(g, [])
                        if len(hit) < bucket_cap:
                            hit.append(i)
        return dups


def split_components(groups, parts: int) -> list:
    """The rows (ascending index arrays) in at most `parts` bins of whole connected components of the graph in
    which two rows are joined when they share a bucket (groups from shared_buckets), the bins as even in
    rows as the components allow (largest first, each to the emptiest bin). Empty bins are left out."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(groups)
    row, band = np.nonzero(groups >= 0)
    if not len(row):
        return []
    buckets = int(groups.max()) + 1
    graph = csr_matrix(
        (np.ones(len(row), dtype=np.int8), (row, n + groups[row, band])), shape=(n + buckets, n + buckets)
    )
    _, label = connected_components(graph, directed=False)
    label = label[:n]
    linked = np.unique(row)  # rows with no shared bucket have no candidates: they need no bin
    sizes = np.bincount(label[linked])
    load = [(0, b) for b in range(parts)]  # (rows, bin): a heap, the emptiest bin on top
    bin_of = np.zeros(len(sizes), dtype=np.int64)
    for c in np.argsort(-sizes, kind="stable").tolist():
        if not sizes[c]:
            break
        rows_in, b = heapq.heappop(load)
        bin_of[c] = b
        heapq.heappush(load, (rows_in + int(sizes[c]), b))
    where = bin_of[label[linked]]
    return [part for part in (linked[where == b] for b in range(parts)) if len(part)]


def shared_buckets(keys):
    """(rows × bands) int64 of the LSH band keys from band_keys: a bucket id, numbered across all bands, where
    another row has the same key in that band, and -1 where none does (such a bucket can never hold a
    candidate for anyone, so it is neither looked up nor stored: at 1M rows most of the ten million band
    keys are of this kind, and a dict entry and a list each had cost about 150 bytes)."""
    out = np.full(keys.shape, -1, dtype=np.int64)
    base = 0
    for b in range(keys.shape[1]):
        _, inverse, counts = np.unique(keys[:, b], return_inverse=True, return_counts=True)
        shared = counts > 1
        ids = np.cumsum(shared) - 1 + base  # consecutive ids for the shared keys of this band
        out[:, b] = np.where(shared[inverse], ids[inverse], -1)
        base += int(shared.sum())
    return out
