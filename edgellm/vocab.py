"""A vocabulary's strings as bytes, a hash index over them, and the two merge loops, in numba.

A 262k-token vocabulary held as Python objects (a str per token and a dict to find them) takes
~40 MB; kept as one buffer of bytes (gguf_file.StringArray), an int32 open-addressing table and
numpy arrays of scores, it takes ~7 MB, and the merge loops run in numba over those arrays:

    index = StringIndex(strings)           strings: StringArray; index.get(b"text") -> id or None
    spm_merge(text, index, scores, byte_ids)               -> int32 ids   (SentencePiece)
    bpe_merge(words, starts, index, merges, raw_byte_ids)  -> int32 ids   (byte-level BPE)

Both loops are llama.cpp's (llm_tokenizer_spm_session, llm_tokenizer_bpe_session): the text is
cut into UTF-8 characters, then the best adjacent pair merges first (SPM: the highest score of
the merged token; BPE: the lowest rank in the merge list; ties: the leftmost pair) until no
pair can merge. Symbols form a linked list over their first byte; a pair queued before one of
its sides changed is skipped when it comes out of the queue.
"""

from __future__ import annotations

import numpy as np

from edgellm.gguf_file import GGUFError, StringArray
from edgellm.kernels.jit import njit

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_NO = np.int64(-1)  # no second part; a numpy scalar, so that numba types it int64, not the literal -1
_ZERO = np.int64(0)
_SPACE = 0x20  # between the two sides of a BPE merge ("left right")


# A few larger functions rather than many small ones: numba compiles each on a first run (a
# fresh install), and data is always a writable uint8 array so that each compiles for one
# signature.

@njit(cache=True, nogil=True)
def _hash(data, a0, a1, b0, b1):
    """FNV-1a of data[a0:a1], or of data[a0:a1] + b" " + data[b0:b1] when b0 >= 0."""
    h = _FNV_OFFSET
    for i in range(a0, a1):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    if b0 >= 0:
        h = (h ^ np.uint64(_SPACE)) * _FNV_PRIME
        for i in range(b0, b1):
            h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def _find(blob, offsets, table, data, a0, a1, b0, b1):
    """The id of the string data[a0:a1] (+ " " + data[b0:b1] when b0 >= 0), or -1."""
    n_a = a1 - a0
    n = n_a + (b1 - b0 + 1 if b0 >= 0 else 0)
    size = np.uint64(table.size)
    slot = _hash(data, a0, a1, b0, b1) % size
    while True:
        j = table[slot]
        if j < 0:
            return -1
        s = offsets[j]
        same = offsets[j + 1] - s == n
        k = 0
        while same and k < n_a:
            same = blob[s + k] == data[a0 + k]
            k += 1
        if same and b0 >= 0:
            same = blob[s + n_a] == _SPACE
            k = 0
            while same and k < b1 - b0:
                same = blob[s + n_a + 1 + k] == data[b0 + k]
                k += 1
        if same:
            return j
        slot += np.uint64(1)
        if slot == size:
            slot = np.uint64(0)


@njit(cache=True, nogil=True)
def _build(blob, offsets):
    """An open-addressing table (int32, -1 empty) with room for 1.5 times the strings (not a
    power of two: 1.5 MiB rather than 2 for a 262k-token vocabulary; a miss probes ~5 slots, a
    hit ~2); the first of equal strings is indexed. Returns (table, first, duplicate): the ids of
    the first pair of equal strings, or -1, -1."""
    n = offsets.size - 1
    size = n + n // 2 + 1
    table = np.full(size, -1, np.int32)
    modulus = np.uint64(size)
    first = dup = -1
    for i in range(n):
        s, e = np.int64(offsets[i]), np.int64(offsets[i + 1])  # int64, as every other caller's: one compile
        j = _find(blob, offsets, table, blob, s, e, _NO, _NO)
        if j >= 0:
            if dup < 0:
                first, dup = j, i
            continue
        slot = _hash(blob, s, e, _NO, _NO) % modulus
        while table[slot] >= 0:
            slot += np.uint64(1)
            if slot == modulus:
                slot = np.uint64(0)
        table[slot] = i
    return table, first, dup


def _bytes_array(data: bytes) -> np.ndarray:
    """uint8 [len(data)], writable (a read-only array would compile every kernel a second time)."""
    return np.frombuffer(bytearray(data), np.uint8)


class StringIndex:
    """Find a string's position in a StringArray: get(text) -> int or None, `text in index`."""

    def __init__(self, strings: StringArray):
        self.strings = strings
        self.table, first, dup = _build(strings.blob, strings.offsets)
        self.duplicate = (first, dup) if dup >= 0 else None  # the first two equal strings' ids

    def get(self, text: str | bytes, default=None):
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        i = _find(self.strings.blob, self.strings.offsets, self.table, _bytes_array(data), _ZERO, len(data), _NO, _NO)
        return default if i < 0 else int(i)

    def __contains__(self, text) -> bool:
        return self.get(text) is not None

    def __getitem__(self, text) -> int:
        i = self.get(text)
        if i is None:
            raise KeyError(text)
        return i

    def __len__(self) -> int:
        return len(self.strings)


# -- the merge loops ---------------------------------------------------------------------------

# The queue: entries (key, left symbol, right symbol, merged bytes) appended to four arrays, and a
# binary heap of entry ids, the lowest key on top, ties the leftmost pair.

@njit(cache=True, nogil=True, inline="always")
def _before(key, left, e, f):
    """Entry e leaves the queue before entry f."""
    return key[e] < key[f] or (key[e] == key[f] and left[e] < left[f])


@njit(cache=True, nogil=True)
def _push(heap, n, key, left, e):
    """Entry e into the heap of n entry ids."""
    i = n
    heap[i] = e
    while i > 0 and _before(key, left, heap[i], heap[(i - 1) >> 1]):
        p = (i - 1) >> 1
        heap[i], heap[p] = heap[p], heap[i]
        i = p


@njit(cache=True, nogil=True)
def _pop(heap, n, key, left):
    """The entry on top of the heap of n entry ids, taken out (n - 1 are left)."""
    top = heap[0]
    n -= 1
    heap[0] = heap[n]
    i = 0
    while 2 * i + 1 < n:
        c = 2 * i + 1
        if c + 1 < n and _before(key, left, heap[c + 1], heap[c]):
            c += 1
        if not _before(key, left, heap[c], heap[i]):
            break
        heap[i], heap[c] = heap[c], heap[i]
        i = c
    return top


@njit(cache=True, nogil=True)
def _queue(queue, counts, text, start, a, b, length, blob, offsets, table, scores, m_blob, m_offsets, m_table):
    """Queue the pair of symbols a, b if it can merge (counts: heap size, entries).
    SPM when scores has entries (key: -score of the merged token), else BPE (key: merge rank)."""
    a0, b0 = start + a, start + b
    if scores.size > 0:
        t = _find(blob, offsets, table, text, a0, b0 + length[b], _NO, _NO)
        if t < 0:
            return
        k = -np.float64(scores[t])
    else:
        t = _find(m_blob, m_offsets, m_table, text, a0, a0 + length[a], b0, b0 + length[b])
        if t < 0:
            return
        k = np.float64(t)
    heap, key, left, right, size = queue
    e = counts[1]
    key[e], left[e], right[e], size[e] = k, a, b, length[a] + length[b]
    _push(heap, counts[0], key, left, e)
    counts[0] += 1
    counts[1] += 1


@njit(cache=True, nogil=True)
def _merge(text, start, end, blob, offsets, table, scores, m_blob, m_offsets, m_table):
    """Merge the characters of text[start:end] (not empty); returns (length, nxt) of the symbols
    left: symbol i spans text[start + i:start + i + length[i]], the list runs 0, nxt[0], ...
    until -1."""
    n = end - start
    length = np.zeros(n, np.int64)
    nxt = np.full(n, -1, np.int64)
    prv = np.full(n, -1, np.int64)
    i = 0
    while i < n:  # UTF-8 characters; a truncated last one keeps the bytes that are there
        top = text[start + i] >> 4  # unicode_len_utf8 of the lead byte
        length[i] = min(4 if top == 15 else 3 if top == 14 else 2 if top >= 12 else 1, n - i)
        if i + length[i] < n:
            nxt[i] = i + length[i]
            prv[i + length[i]] = i
        i += length[i]
    cap = 3 * n + 1  # n - 1 pairs to start with, at most two more per merge
    queue = (np.empty(cap, np.int64), np.empty(cap, np.float64), np.empty(cap, np.int64),
             np.empty(cap, np.int64), np.empty(cap, np.int64))  # heap; key, left, right, size
    heap, key, left, right, size = queue
    counts = np.zeros(2, np.int64)
    a = _ZERO
    while nxt[a] >= 0:
        _queue(queue, counts, text, start, a, nxt[a], length, blob, offsets, table, scores, m_blob, m_offsets, m_table)
        a = nxt[a]
    while counts[0] > 0:
        e = _pop(heap, counts[0], key, left)
        counts[0] -= 1
        a, b = left[e], right[e]
        if length[a] == 0 or length[b] == 0 or length[a] + length[b] != size[e]:
            continue  # one side changed since this pair was queued
        length[a] += length[b]
        length[b] = 0
        nxt[a] = nxt[b]
        if nxt[a] >= 0:
            prv[nxt[a]] = a
            _queue(queue, counts, text, start, a, nxt[a], length, blob, offsets, table, scores, m_blob, m_offsets,
                   m_table)
        if prv[a] >= 0:
            _queue(queue, counts, text, start, prv[a], a, length, blob, offsets, table, scores, m_blob, m_offsets,
                   m_table)
    return length, nxt


@njit(cache=True, nogil=True)
def _spm(text, blob, offsets, table, scores, byte_ids):
    out = np.empty(text.size, np.int32)
    if text.size == 0:
        return out
    no_merges = np.zeros(1, np.int32)
    length, nxt = _merge(text, _ZERO, text.size, blob, offsets, table, scores, blob, offsets, no_merges)
    k = 0
    i = _ZERO
    while i >= 0:
        t = _find(blob, offsets, table, text, i, i + length[i], _NO, _NO)
        if t >= 0:
            out[k] = t
            k += 1
        else:  # only an unmerged character can be missing (a merge always makes a token)
            for j in range(i, i + length[i]):
                out[k] = byte_ids[text[j]]
                k += 1
        i = nxt[i]
    return out[:k]


@njit(cache=True, nogil=True)
def _bpe(words, starts, blob, offsets, table, m_blob, m_offsets, m_table, raw_byte_ids, ignore_merges):
    out = np.empty(words.size, np.int32)
    no_scores = np.zeros(0, np.float32)
    k = 0
    for w in range(starts.size - 1):
        s, e = starts[w], starts[w + 1]
        if e == s:
            continue
        if ignore_merges:
            t = _find(blob, offsets, table, words, s, e, _NO, _NO)
            if t >= 0:
                out[k] = t
                k += 1
                continue
        length, nxt = _merge(words, s, e, blob, offsets, table, no_scores, m_blob, m_offsets, m_table)
        i = _ZERO
        while i >= 0:
            t = _find(blob, offsets, table, words, s + i, s + i + length[i], _NO, _NO)
            if t >= 0:
                out[k] = t
                k += 1
            else:  # llama.cpp looks up each byte of the symbol alone and drops those it lacks
                for j in range(s + i, s + i + length[i]):
                    if raw_byte_ids[words[j]] >= 0:
                        out[k] = raw_byte_ids[words[j]]
                        k += 1
            i = nxt[i]
    return out[:k]


def spm_merge(text: bytes, index: StringIndex, scores: np.ndarray, byte_ids: np.ndarray) -> np.ndarray:
    """SentencePiece ids of text (UTF-8, spaces already "▁"); scores float32 [n_vocab];
    byte_ids int32 [256]: the token for a byte no token covers (negative: none, -1 - byte)."""
    s = index.strings
    return _spm(_bytes_array(text), s.blob, s.offsets, index.table, scores, byte_ids)


def bpe_merge(words: bytes, starts: np.ndarray, index: StringIndex, merges: StringIndex,
              raw_byte_ids: np.ndarray, ignore_merges: bool) -> np.ndarray:
    """Byte-level BPE ids of words: their UTF-8 bytes back to back, word i is
    words[starts[i]:starts[i + 1]]; merges indexes "left right" strings by rank."""
    s, m = index.strings, merges.strings
    return _bpe(_bytes_array(words), starts, s.blob, s.offsets, index.table,
                m.blob, m.offsets, merges.table, raw_byte_ids, ignore_merges)


def strings_of(value, what: str) -> StringArray:
    """A metadata string array (StringArray, or a list of str from a caller) as a StringArray."""
    if isinstance(value, StringArray):
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise GGUFError(f"{what} is missing or not a list of strings")
    return StringArray.from_strings(value)
