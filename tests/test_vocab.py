"""The vocabulary's hash index and the numba merge loops (edgellm/vocab.py), against a plain
Python statement of llama.cpp's merge rule on small random vocabularies with many ties."""

from __future__ import annotations

import heapq
import random

import numpy as np
import pytest

from edgellm.gguf_file import StringArray
from edgellm.vocab import StringIndex, bpe_merge, spm_merge

ALPHABET = ["a", "b", "c", "▁", "é", "東", "🦙"]


def merge_adjacent(symbols: list[str], priority) -> list[str]:
    """Join the adjacent pair with the lowest priority(left, right) (ties: leftmost) until no
    pair has one (None): llm_tokenizer_spm_session and llm_tokenizer_bpe_session both do this."""
    symbols = list(symbols)
    nxt = [i + 1 if i + 1 < len(symbols) else -1 for i in range(len(symbols))]
    prv = list(range(-1, len(symbols) - 1))
    queue = []

    def push(left, right):
        p = priority(symbols[left], symbols[right])
        if p is not None:
            heapq.heappush(queue, (p, left, right, symbols[left] + symbols[right]))

    for i in range(len(symbols) - 1):
        push(i, i + 1)
    while queue:
        _, left, right, merged = heapq.heappop(queue)
        if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
            continue
        symbols[left], symbols[right] = merged, ""
        nxt[left] = nxt[right]
        if nxt[left] >= 0:
            prv[nxt[left]] = left
            push(left, nxt[left])
        if prv[left] >= 0:
            push(prv[left], left)
    return [s for s in symbols if s]


def random_text(rng, n):
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def test_the_index_finds_every_string_and_nothing_else():
    strings = ["", "a", "ab", "ba", "東京", "a b", "\x00x", "b"] + [f"t{i}" for i in range(100)]
    index = StringIndex(StringArray.from_strings(strings))
    assert index.duplicate is None
    assert [index.get(s) for s in strings] == list(range(len(strings)))
    assert index.get("abc") is None and "東" not in index and index.get(b"\xff") is None


def test_the_index_reports_the_first_duplicate():
    assert StringIndex(StringArray.from_strings(["x", "y", "z", "y", "x"])).duplicate == (1, 3)


@pytest.mark.parametrize("seed", range(20))
def test_spm_merges_as_the_rule_says(seed):
    rng = random.Random(seed)
    tokens = list(dict.fromkeys(ALPHABET[:-1] + [random_text(rng, rng.randint(2, 4)) for _ in range(60)]))
    scores = np.array([rng.randint(0, 3) for _ in tokens], np.float32)  # few values: many ties
    vocab = {t: i for i, t in enumerate(tokens)}
    index = StringIndex(StringArray.from_strings(tokens))
    byte_ids = np.arange(1000, 1256, dtype=np.int32)  # "🦙" is no token: its 4 bytes fall back

    def priority(left, right):
        t = vocab.get(left + right)
        return None if t is None else -scores[t]

    for _ in range(30):
        text = random_text(rng, rng.randint(0, 40))
        want = []
        for symbol in merge_adjacent(list(text), priority):
            want += [vocab[symbol]] if symbol in vocab else [1000 + b for b in symbol.encode()]
        assert spm_merge(text.encode(), index, scores, byte_ids).tolist() == want, text


@pytest.mark.parametrize("seed", range(20))
def test_bpe_merges_as_the_rule_says(seed):
    rng = random.Random(seed)
    tokens = ALPHABET[:-1]
    merges = []
    for _ in range(60):  # each merge joins two tokens into a new one, as a BPE vocabulary grows
        left, right = rng.choice(tokens), rng.choice(tokens)
        if left + right not in tokens:
            merges.append(f"{left} {right}")
            tokens = tokens + [left + right]
    merges += merges[:5]  # duplicates: the first rank wins
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {}
    for rank, m in enumerate(merges):
        ranks.setdefault(m, rank)
    index, merge_index = StringIndex(StringArray.from_strings(tokens)), StringIndex(StringArray.from_strings(merges))
    raw = np.full(256, -1, np.int32)
    raw[ord("a")] = vocab["a"]  # the one single-byte token; other bytes of a symbol are dropped

    for _ in range(30):
        words = [random_text(rng, rng.randint(1, 12)) for _ in range(rng.randint(0, 5))]
        want = []
        for word in words:
            for symbol in merge_adjacent(list(word), lambda a, b: ranks.get(f"{a} {b}")):
                want += [vocab[symbol]] if symbol in vocab else [raw[b] for b in symbol.encode() if raw[b] >= 0]
        data = [w.encode() for w in words]
        starts = np.cumsum([0] + [len(d) for d in data]).astype(np.int64)
        assert bpe_merge(b"".join(data), starts, index, merge_index, raw, False).tolist() == want, words
