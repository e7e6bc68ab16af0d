"""The set rules of cleaning: exact and near-duplicate texts, found on a normalised key of each text.

The first record of each group stays, in merged order. Near duplicates are found with MinHash LSH over
character n-grams and confirmed with the exact Jaccard of the two n-gram sets.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from zhufu.text import is_emoji


def normalise(text: str) -> str:
    """The dedup key of a text: NFKC, lower case, only letters, digits and Han (no punctuation, emoji, space)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum() and not is_emoji(ch))


def shingles(key: str, n: int) -> set[bytes]:
    """Character n-grams of a normalised text (the whole text when it is shorter than n)."""
    if len(key) <= n:
        return {key.encode("utf-8")}
    return {key[i : i + n].encode("utf-8") for i in range(len(key) - n + 1)}


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


def near_duplicates(
    keys: list[str], ngram: int, threshold: float, num_perm: int, seed: int = 1
) -> dict[int, tuple[int, float]]:
    """index -> (index of an earlier kept record, Jaccard) for near-duplicates of short texts.

    MinHash over character n-grams finds candidates with datasketch's MinHashLSH; each candidate is
    confirmed with the exact Jaccard of the two n-gram sets, so the LSH's false positives drop nothing. A
    record is compared with earlier kept records only, so the first of each group stays.
    """
    signatures = minhash_signatures((shingles(k, ngram) for k in keys), num_perm, seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    # One MinHash carries each row's signature into the LSH (which keeps band hashes, not the object).
    carrier = MinHash(num_perm=num_perm, seed=seed)
    dups: dict[int, tuple[int, float]] = {}
    for i in range(len(keys)):
        carrier.hashvalues = signatures[i]
        best: tuple[int, float] | None = None
        candidates = lsh.query(carrier)
        if candidates:
            # n-gram sets are rebuilt when needed rather than kept: at 1M rows they would cost gigabytes
            mine = shingles(keys[i], ngram)
            for j in candidates:
                theirs = shingles(keys[j], ngram)
                jac = len(mine & theirs) / len(mine | theirs)
                if jac >= threshold and (best is None or jac > best[1] or (jac == best[1] and j < best[0])):
                    best = (j, jac)
        if best is not None:
            dups[i] = best
        else:
            lsh.insert(i, carrier, check_duplication=False)
    return dups
