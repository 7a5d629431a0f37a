"""A GGUF file as the source: keep its metadata and tensor names, re-encode its tensors.

Tensors are dequantized to float32 (gguf-py's dequantizers) and quantized again to the types the
policy in quantize.py picks; a tensor already stored in its output type is copied byte for byte.
Names, layouts and the vocabulary were fixed when the file was made, so nothing is transformed.
"""

from __future__ import annotations

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from edgellm.converters.errors import ConvertError
from edgellm.converters.quantize import LOSSLESS, dequantize_rows
from edgellm.converters.writer import TensorPlan
from edgellm.gguf_file import GGUFError, GGUFFile, StringArray, Tensor

# Written afresh for the new file (the architecture by GGUFWriter itself).
REWRITTEN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
                  "general.alignment")

_ARRAY_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8, np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16, np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.uint64): GGUFValueType.UINT64, np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.float64): GGUFValueType.FLOAT64,
    np.dtype(np.bool_): GGUFValueType.BOOL,
}


def open_gguf(path) -> GGUFFile:
    if path.suffix == ".safetensors":
        raise ConvertError(f"{path} is a safetensors file: pass the checkpoint folder that holds it")
    try:
        return GGUFFile(path)
    except GGUFError as e:
        raise ConvertError(f"{path}: {e}") from None


def gguf_plan(source: GGUFFile) -> tuple[GGUFWriter, list[TensorPlan]]:
    """A writer holding the source's metadata, and a plan for each of its tensors."""
    writer = GGUFWriter(path=None, arch=source.architecture)
    for key, value in source.metadata.items():
        if key in REWRITTEN_KEYS or key.startswith("split."):
            continue
        if isinstance(value, (list, np.ndarray)) and len(value) == 0:
            continue  # GGUFWriter cannot write an empty array, and it says nothing
        writer.add_key_value(key, *_typed(key, value))
    return writer, [_plan(t) for t in source.tensors.values()]


def lossy_types(source: GGUFFile) -> list[str]:
    """Names of the quantized types the source's matrices are stored in (empty: lossless)."""
    return sorted({t.type_name for t in source.tensors.values()
                   if len(t.shape) > 1 and t.ggml_type not in LOSSLESS})


def _plan(t: Tensor) -> TensorPlan:
    return TensorPlan(
        t.name, t.shape, t.type_name,
        read=lambda a, b: dequantize_rows(t.data[a:b], t.ggml_type, t.n_cols),
        read_stored=lambda a, b: t.data[a:b], stored_type=t.ggml_type,
    )


def _typed(key: str, value) -> tuple:
    """(value, GGUF type, element type) for GGUFWriter.add_key_value.

    The reader gives plain Python scalars, so their stored width is gone; integers are written as
    UINT32, the type llama.cpp reads for every integer key of the architectures we convert (token
    ids, lengths, counts, file type), wider ones as 64-bit."""
    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return value, GGUFValueType.UINT32, None
        return value, GGUFValueType.INT64 if value < 0 else GGUFValueType.UINT64, None
    if isinstance(value, float):
        return value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):  # vocabularies may hold bytes that are not UTF-8: keep them as read
        return value.encode("utf-8", "surrogateescape"), GGUFValueType.STRING, None
    if isinstance(value, np.ndarray) and value.dtype in _ARRAY_TYPES:
        return value.tolist(), GGUFValueType.ARRAY, _ARRAY_TYPES[value.dtype]
    if isinstance(value, StringArray):
        return [value.raw(i) for i in range(len(value))], GGUFValueType.ARRAY, GGUFValueType.STRING
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.encode("utf-8", "surrogateescape") for v in value], GGUFValueType.ARRAY, GGUFValueType.STRING
    raise ConvertError(f"cannot copy metadata {key}: unsupported value {type(value).__name__}")
