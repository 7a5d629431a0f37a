"""Output types, which type each tensor gets, and the quantizers themselves.

Every type we write is produced by `gguf.quants.quantize` (numpy ports of ggml's reference
quantizers, `quantize_row_q8_0_ref` and friends, byte for byte) or by a plain float cast (f32,
f16: round-to-nearest-even, as ggml does).

Type policy, the same as llama.cpp's convert_hf_to_gguf.py unless noted:
- 1-D tensors (norm weights, biases, rope_freqs) stay F32: they are tiny and llama.cpp's kernels
  expect F32 there.
- token_embd and output (the input embeddings and the logits projection) get `--keep-embeddings`
  when given. Otherwise they follow `--type` for f32/f16/bf16/q8_0, but stay Q8_0 for the 4- and
  5-bit types: those two matrices are the most sensitive to quantization (Gemma ties them, so one
  matrix makes every logit) and llama.cpp's own quantizer keeps `output` at 6 bits for Q4_0;
  Q8_0 is the nearest type we produce exactly. That is our choice, not convert_hf_to_gguf's.
- Everything else gets `--type`; a matrix whose rows are not a whole number of blocks (32 values)
  falls back to F16, as in convert_hf_to_gguf.py.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants

from edgellm.converters import options
from edgellm.converters.errors import ConvertError

Q = GGMLQuantizationType

# --type NAME -> (tensor type, general.file_type)
OUTPUT_TYPES = {name: (Q[name.upper()], LlamaFileType["ALL_F32" if name == "f32" else f"MOSTLY_{name.upper()}"])
                for name in options.OUTPUT_TYPES}
EMBEDDING_TYPES = {name: Q[name.upper()] for name in options.EMBEDDING_TYPES}  # --keep-embeddings NAME
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")
LOW_BIT = (Q.Q4_0, Q.Q4_1, Q.Q5_0)
LOSSLESS = (Q.F32, Q.F16, Q.BF16)  # source types that requantizing does not make worse


def output_type(name: str) -> tuple[GGMLQuantizationType, LlamaFileType]:
    if name not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {name!r} (choose from {', '.join(OUTPUT_TYPES)})")
    return OUTPUT_TYPES[name]


def embedding_type(name: str | None) -> GGMLQuantizationType | None:
    if name is None:
        return None
    if name not in EMBEDDING_TYPES:
        raise ConvertError(f"--keep-embeddings must be one of {', '.join(EMBEDDING_TYPES)}, got {name!r}")
    return EMBEDDING_TYPES[name]


def choose_type(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType,
                keep_embeddings: GGMLQuantizationType | None) -> GGMLQuantizationType:
    """The type tensor `name` of `shape` (numpy order) is written in; see the module docstring."""
    if len(shape) <= 1:
        return Q.F32
    if name in EMBEDDING_TENSORS:
        if keep_embeddings is not None:
            qtype = keep_embeddings
        elif qtype in LOW_BIT:
            qtype = Q.Q8_0
    block_size = GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block_size:
        return Q.F16
    return qtype


def row_bytes(n_cols: int, qtype: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return n_cols // block_size * type_size


def quantize_rows(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 [k, n_cols] -> uint8 [k, row_bytes]: the rows encoded as `qtype`."""
    return quants.quantize(rows, qtype).view(np.uint8).reshape(rows.shape[0], -1)


def dequantize_rows(data: np.ndarray, qtype: GGMLQuantizationType, n_cols: int) -> np.ndarray:
    """uint8 [k, row_bytes] of `qtype` -> float32 [k, n_cols]."""
    try:
        return quants.dequantize(data, qtype).reshape(data.shape[0], n_cols)
    except NotImplementedError:
        raise ConvertError(f"cannot read {qtype.name} tensors (gguf-py has no dequantizer for it)") from None
