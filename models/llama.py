"""Llama 2/3, Mistral, SmolLM, TinyLlama: pre-norm blocks, SwiGLU FFN, RoPE on adjacent pairs.

llama.cpp's converter permutes the Q/K rows of `llama` checkpoints so that RoPE rotates adjacent
pairs (ROPE_NORM); biases and Q/K norms are taken when the file has them. qwen2 and qwen3 reuse
this block and differ only in what they require and how they rotate.
"""

from __future__ import annotations

import numpy as np

from edgellm.gguf_file import GGUFError
from edgellm.kernels.nn import ROPE_NORM, silu_mul
from edgellm.models.base import Attention, FeedForward, Transformer, Weights


class LlamaBlock:
    def __init__(self, model: Transformer, w: Weights, il: int):
        hp = model.hp
        self.eps = hp.norm_eps
        self.attn_norm = w.vector(f"blk.{il}.attn_norm.weight", hp.n_embd)
        self.attn = Attention(hp, w, il)
        self.attn.rope_factors = model.rope_factors
        self.ffn_norm = w.vector(f"blk.{il}.ffn_norm.weight", hp.n_embd)
        self.ffn = FeedForward(hp, w, il, silu_mul)

    def __call__(self, x: np.ndarray, positions: np.ndarray, cache) -> np.ndarray:
        # x [n, d] -> x + attn(norm(x)), then + ffn(norm(.))
        h = x + self.attn(x, positions, cache, norm=(self.attn_norm, self.eps))
        return h + self.ffn(h, norm=(self.ffn_norm, self.eps))


class Llama(Transformer):
    rope_type = ROPE_NORM
    required_tensors: tuple[str, ...] = ()  # per-block tensors a variant insists on (beyond llama's)

    def __init__(self, gguf):
        # Llama 3.1+ long-context RoPE: per-frequency divisors stored as a tensor.
        freqs = gguf.tensors.get("rope_freqs.weight")
        self.rope_factors = None if freqs is None else np.asarray(freqs.array(), np.float32).ravel()
        super().__init__(gguf)
        if self.rope_factors is not None and self.rope_factors.size != self.hp.n_rot // 2:
            raise GGUFError(f"rope_freqs.weight has {self.rope_factors.size} values, expected {self.hp.n_rot // 2}")

    def make_block(self, w: Weights, il: int) -> LlamaBlock:
        for name in self.required_tensors:
            if f"blk.{il}.{name}" not in w.tensors:
                raise GGUFError(f"missing tensor blk.{il}.{name} ({self.hp.arch} needs it)")
        return LlamaBlock(self, w, il)
