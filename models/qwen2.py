"""Qwen2 / Qwen2.5: the llama block with Q/K/V biases, RoPE on halves (NeoX)."""

from edgellm.kernels.nn import ROPE_NEOX
from edgellm.models.llama import Llama


class Qwen2(Llama):
    rope_type = ROPE_NEOX
    required_tensors = ("attn_q.bias", "attn_k.bias", "attn_v.bias")
