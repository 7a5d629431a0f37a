"""Choosing the next token from logits, in llama.cpp's default order:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw (or argmax when temp <= 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgellm.errors import EdgeLLMError


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at
    seed: int | None = None  # None: a fresh random seed

    def validate(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise EdgeLLMError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EdgeLLMError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise EdgeLLMError(f"min-p must be in [0, 1], got {self.min_p}")
        if not self.repeat_penalty > 0:
            raise EdgeLLMError(f"repeat penalty must be > 0, got {self.repeat_penalty}")


class Sampler:
    def __init__(self, params: SamplingParams):
        params.validate()
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, recent: list[int]) -> int:
        """logits [n_vocab] for the next position; recent: the tokens so far (prompt included)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0 and recent:
            logits = logits.copy()
            window = recent[-p.repeat_last_n:] if p.repeat_last_n > 0 else recent
            seen = np.unique(np.asarray(window, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(logits))

        ids = np.arange(logits.size)
        if 0 < p.top_k < logits.size:
            ids = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
        ids = ids[np.argsort(-logits[ids], kind="stable")]  # candidates, best first
        cand = logits[ids].astype(np.float64)

        if p.top_p < 1.0:
            probs = _softmax(cand)
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1  # smallest set reaching top_p
            ids, cand = ids[:cut], cand[:cut]
        if p.min_p > 0.0:
            keep = cand >= cand[0] + np.log(p.min_p)  # p_i >= min_p * p_max
            ids, cand = ids[keep], cand[keep]
        probs = _softmax(cand / p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
