"""Numba kernels for GGUF tensors: dequantize, embedding lookup, and x @ W.T on raw block bytes.

A weight arrives as its bytes in the file, data: uint8 [rows, row_bytes] (one row per output
feature, n_cols values) and its ggml type as an int (`gguf.GGMLQuantizationType`):

    dequantize(data, ggml_type, n_cols)         -> float32 [rows, n_cols]
    get_rows(data, ggml_type, n_cols, row_ids)  -> float32 [len(row_ids), n_cols]
    matmul(x, data, ggml_type, n_cols, out=None) -> float32 [n, rows] = x @ W.T

Threads: numba's (set with numba.set_num_threads) for the kernels, numpy's BLAS for prefill.
"""

from .dispatch import SUPPORTED_TYPES, dequantize, get_rows, matmul

__all__ = ["SUPPORTED_TYPES", "dequantize", "get_rows", "matmul"]
