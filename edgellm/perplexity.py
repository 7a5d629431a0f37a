"""Perplexity as llama.cpp's `llama-perplexity` computes it, so the numbers compare directly:
tokenize the whole text with BOS, cut it into non-overlapping chunks of n_ctx tokens, put BOS
first in each chunk, evaluate each chunk in a fresh context and score only its second half (so
every scored token has at least n_ctx/2 tokens of context)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgellm.errors import EdgeLLMError


@dataclass
class Perplexity:
    ppl: float
    error: float  # standard error of the estimate, as llama.cpp reports it
    n_chunks: int
    n_scored: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, targets: np.ndarray, rows: int = 32) -> np.ndarray:
    """-log softmax(logits[i])[targets[i]] for each row i, in float64, a few rows at a time (a
    whole chunk's float64 copy over a 262k vocabulary would be ~0.5 GB, and its temporaries more)."""
    out = np.empty(len(targets), np.float64)
    for s in range(0, len(targets), rows):
        logp = log_softmax(logits[s : s + rows].astype(np.float64))
        out[s : s + rows] = -logp[np.arange(len(logp)), targets[s : s + rows]]
    return out


def perplexity(llm, text: str, n_ctx: int, progress=None) -> Perplexity:
    tokens = llm.tokenize(text, bos=True)
    n_chunks = len(tokens) // n_ctx
    if n_chunks < 1 or len(tokens) < 2 * n_ctx:
        raise EdgeLLMError(f"the text has {len(tokens)} tokens; perplexity with -c {n_ctx} needs at least {2 * n_ctx}")
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunks):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        # the first half only gives the scored half its context: no logits for it
        target = np.asarray(chunk[first + 1 :])
        nlls = token_nll(llm.logits(chunk[: n_ctx - 1], start=first), target)
        nll += nlls.sum()
        nll2 += np.square(nlls).sum()
        count += len(target)
        if progress:
            progress(i + 1, n_chunks, math.exp(nll / count))
    mean = nll / count
    var = nll2 / count - mean * mean
    error = math.sqrt(var / (count - 1)) * math.exp(mean) if var > 0 and count > 1 else 0.0
    return Perplexity(math.exp(mean), error, n_chunks, count)
