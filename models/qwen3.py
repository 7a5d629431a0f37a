"""Qwen3 (dense): the llama block with per-head RMS norms on Q and K before RoPE (NeoX), no biases."""

from edgellm.kernels.nn import ROPE_NEOX
from edgellm.models.llama import Llama


class Qwen3(Llama):
    rope_type = ROPE_NEOX
    required_tensors = ("attn_q_norm.weight", "attn_k_norm.weight")
