"""Gemma 3 (text): RMS norms before *and* after attention and FFN, GELU-tanh gated FFN, Q/K norms,
embeddings scaled by sqrt(d), output tied to the embeddings, and interleaved attention: five
sliding-window layers (RoPE base 10k) for every global layer (RoPE base from metadata, 1M).

The GGUF norm weights already include Gemma's "+1" (the converter adds it), so they are used as is.
"""

from __future__ import annotations

import math

import numpy as np

from edgellm.gguf_file import GGUFError, GGUFFile
from edgellm.kernels.nn import ROPE_NEOX, add_rms_norm, gelu_mul
from edgellm.models.base import Attention, FeedForward, HParams, MetadataView, Transformer, Weights, read_hparams

SWA_PATTERN = 6  # llama.cpp: layer il slides unless (il % 6) == 5
ROPE_BASE_SWA = 10000.0  # llama.cpp's rope_freq_base_train_swa for gemma3


class Gemma3Block:
    def __init__(self, hp: HParams, w: Weights, il: int):
        p, d = f"blk.{il}.", hp.n_embd
        self.eps = hp.norm_eps
        self.attn_norm = w.vector(p + "attn_norm.weight", d)
        self.attn = Attention(hp, w, il)
        if self.attn.q_norm is None or self.attn.k_norm is None:
            raise GGUFError(f"missing tensor {p}attn_q_norm.weight/attn_k_norm.weight (gemma3 needs them)")
        self.post_attention_norm = w.vector(p + "post_attention_norm.weight", d)
        self.ffn_norm = w.vector(p + "ffn_norm.weight", d)
        self.ffn = FeedForward(hp, w, il, gelu_mul)
        self.post_ffw_norm = w.vector(p + "post_ffw_norm.weight", d)

    def __call__(self, x: np.ndarray, positions: np.ndarray, cache) -> np.ndarray:
        eps = self.eps
        a = self.attn(x, positions, cache, norm=(self.attn_norm, eps))
        x = add_rms_norm(x, a, self.post_attention_norm, eps)
        f = self.ffn(x, norm=(self.ffn_norm, eps))
        return add_rms_norm(x, f, self.post_ffw_norm, eps)


class Gemma3(Transformer):
    rope_type = ROPE_NEOX

    def read_hparams(self, gguf: GGUFFile) -> HParams:
        hp = read_hparams(gguf, self.rope_type)
        md = MetadataView(gguf, hp.arch)
        window = md.int("attention.sliding_window", 0) if md.has("attention.sliding_window") else 0
        if window:
            pattern = gguf.get(md.key("attention.sliding_window_pattern"), SWA_PATTERN)
            if isinstance(pattern, np.ndarray):  # per-layer flags
                if pattern.size != hp.n_layer:
                    raise GGUFError(f"sliding_window_pattern has {pattern.size} entries for {hp.n_layer} layers")
                hp.swa_layers = tuple(bool(v) for v in pattern)
            else:
                pattern = md.int("attention.sliding_window_pattern", SWA_PATTERN)
                hp.swa_layers = tuple(il % pattern < pattern - 1 for il in range(hp.n_layer))
            hp.sliding_window = window
            hp.rope_base_swa = md.float("rope.freq_base_swa", ROPE_BASE_SWA)
            hp.rope_freq_scale_swa = 1.0
        # Gemma scales queries by 1/sqrt(query_pre_attn_scalar): head_dim, except 27B (d / n_head).
        if hp.n_layer == 62:
            hp.attn_scale = 1.0 / math.sqrt(hp.n_embd / hp.n_head)
        self.embed_scale = math.sqrt(hp.n_embd)
        return hp

    def make_block(self, w: Weights, il: int) -> Gemma3Block:
        return Gemma3Block(self.hp, w, il)
