"""N:M-sparse weights written by `edgellm convert --sparsity` (the spec: docs/sparse-format.md).

A file with pruned weights says so in its metadata:

    edgellm.sparsity.pattern     "2:4": in every group of 4 consecutive weights of a row, at most 2
                                 are non-zero
    edgellm.sparsity.layout      "compact" (kept values + positions + scales, 2:4 only) or "dense"
                                 (plain Q4_0/Q8_0 with the zeros in place, which llama.cpp loads)
    edgellm.sparsity.value_type  "q4_0" or "q8_0": how the kept values are quantized
    edgellm.sparsity.method      "magnitude", "wanda" or "sparsegpt" (informative)
    edgellm.sparsity.tensors     the pruned weights' names, e.g. "blk.0.ffn_up.weight"

In the compact layout a pruned weight W [rows, n_cols] is three tensors instead of one:

    W.sp_values  I8   Q4: [rows, n_cols / 4] bytes, Q8: [rows, n_cols / 2]
    W.sp_index   I8   [rows, n_cols / 8]: 2-bit positions of the kept values
    W.sp_scales  F16  [rows, n_cols / 32]: the block scales

`sparse_weights(gguf)` gives every pruned weight as a SparseWeight, which the models multiply by
through `matmul(x)`; a dense-layout file is repacked into the compact planes here, at load, so
both layouts run on the same kernels (kernels/sparse.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.gguf_file import GGUFError, GGUFFile, StringArray
from edgellm.kernels import sparse as kernels
from edgellm.kernels.dispatch import SparseWeightGroup, parallel_loops
from edgellm.kernels.ggml_types import GGMLQuantizationType as Q

PREFIX = "edgellm.sparsity."
VALUE_TYPES = {"q4_0": Q.Q4_0, "q8_0": Q.Q8_0}
LAYOUTS = ("compact", "dense")
PLANES = (".sp_values", ".sp_index", ".sp_scales")
BLOCK = 32  # columns per scale (the Q4_0 / Q8_0 block)
ROW_MULTIPLE = 64  # compact rows are whole pairs of blocks (Q4 packs two blocks' nibbles together)
GROUP = 4  # columns per 2:4 group
ZERO = {Q.Q4_0: 8, Q.Q8_0: 0}  # the stored integer that means 0.0


class SparsityError(EdgeLLMError, ValueError):
    """A sparse weight that breaks its pattern (more than N non-zero values in a group)."""


@dataclass
class SparseWeight:
    """A 2:4 pruned weight W [rows, n_cols] in the compact planes (see the module docstring)."""

    name: str
    shape: tuple[int, int]  # (rows, n_cols), numpy order
    value_type: Q  # Q4_0 or Q8_0
    values: np.ndarray  # Q4: uint8 [rows, n_cols/4]; Q8: int8 [rows, n_cols/2]
    index: np.ndarray  # uint8 [rows, n_cols/8]
    scales: np.ndarray  # uint16 [rows, n_cols/32], f16 bits

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.index.nbytes + self.scales.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x float32 [n, n_cols] -> x @ W.T, float32 [n, rows] (a group of one; the models keep
        their groups, laid out once)."""
        return SparseGroup([self]).matmul(x)[0]

    def dequantize_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Rows [start, start + len(out)) as float32, zeros in place: the twin's values exactly."""
        parallel_loops()
        kernels.dequantize(self.values, self.index, self.scales, start, out, self.value_type == Q.Q8_0)
        return out

    def dequantize(self) -> np.ndarray:
        return self.dequantize_into(0, np.empty(self.shape, np.float32))


class SparseGroup:
    """Pruned weights of one value type and width that read the same x (Q, K, V; gate, up):
    `matmul(x)` -> [x @ W.T for each W], one team job for all their rows, as dense weights are
    multiplied together (kernels.dispatch.SparseWeightGroup, laid out once here)."""

    def __init__(self, weights: list[SparseWeight]):
        self.n_cols, value_type = weights[0].n_cols, weights[0].value_type
        if any(w.n_cols != self.n_cols or w.value_type != value_type for w in weights):
            raise ValueError("SparseGroup: the weights must have one width and value type")
        self.rows = [w.shape[0] for w in weights]
        self.kernels = SparseWeightGroup([(w.values, w.index, w.scales) for w in weights], value_type == Q.Q8_0)

    def matmul(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_cols:
            raise ValueError(f"x must be [n, {self.n_cols}], got {x.shape}")
        return self.kernels.matmul(x, [np.empty((x.shape[0], rows), np.float32) for rows in self.rows])


def read_metadata(gguf: GGUFFile) -> dict | None:
    """The edgellm.sparsity.* keys, checked; None for a file without pruned weights."""
    md = gguf.metadata
    if PREFIX + "pattern" not in md:
        return None
    pattern, layout = md[PREFIX + "pattern"], md.get(PREFIX + "layout")
    value_type, names = md.get(PREFIX + "value_type"), md.get(PREFIX + "tensors")
    try:
        n, m = (int(p) for p in str(pattern).split(":"))
    except ValueError:
        raise GGUFError(f"{PREFIX}pattern must be N:M, got {pattern!r}") from None
    if not 0 < n < m or layout not in LAYOUTS or value_type not in VALUE_TYPES:
        raise GGUFError(f"unsupported sparsity: pattern {pattern!r}, layout {layout!r}, values {value_type!r}")
    if layout == "compact" and (n, m) != (2, GROUP):
        raise GGUFError(f"the compact layout is 2:4 only, got {pattern}")
    if not isinstance(names, (list, StringArray)) or not all(isinstance(s, str) for s in names):
        raise GGUFError(f"{PREFIX}tensors must be a list of tensor names")
    return {"n": n, "m": m, "layout": layout, "value_type": VALUE_TYPES[value_type],
            "method": md.get(PREFIX + "method", "?"), "tensors": list(names)}


# Set by weight_wrapper() while calibration loads a model (converters/calibrate.py).
_wrapper: Callable | None = None


@contextmanager
def weight_wrapper(wrap: Callable):
    """While active, sparse_weights() hands every tensor t of the file to wrap(name, t) and
    returns what wrap gives instead of t (None: keep t). The models multiply by any weight
    with a matmul(x) method, so calibration can see each layer's input without touching them."""
    global _wrapper
    _wrapper = wrap
    try:
        yield
    finally:
        _wrapper = None


def sparse_weights(gguf: GGUFFile) -> dict:
    """Every pruned 2:4 weight of the file by name (empty for a dense file); a dense-layout
    file's Q4_0/Q8_0 twins are repacked into the compact planes (checked 2:4 on the way)."""
    weights = _sparse_weights(gguf)
    if _wrapper is not None:
        for name, t in gguf.tensors.items():
            wrapped = _wrapper(name, weights.get(name, t))
            if wrapped is not None:
                weights[name] = wrapped
    return weights


def _sparse_weights(gguf: GGUFFile) -> dict[str, SparseWeight]:
    meta = read_metadata(gguf)
    if meta is None or (meta["n"], meta["m"]) != (2, GROUP):
        return {}  # other N:M patterns are stored dense and run on the dense kernels
    weights = {}
    for name in meta["tensors"]:
        if meta["layout"] == "compact":
            weights[name] = _from_planes(gguf, name, meta["value_type"])
        else:
            t = gguf.tensors.get(name)
            if t is None or t.ggml_type != meta["value_type"] or len(t.shape) != 2:
                raise GGUFError(f"sparse tensor {name} is missing or not a {meta['value_type'].name} matrix")
            weights[name] = from_twin(name, t.data, t.ggml_type, t.shape[1])
    return weights


def _from_planes(gguf: GGUFFile, name: str, value_type: Q) -> SparseWeight:
    planes = [gguf.tensors.get(name + suffix) for suffix in PLANES]
    if any(p is None or len(p.shape) != 2 for p in planes):
        raise GGUFError(f"sparse tensor {name}: missing {'/'.join(name + s for s in PLANES)}")
    values, index, scales = planes
    rows, n_cols = index.shape[0], index.shape[1] * 8
    if n_cols % ROW_MULTIPLE:
        raise GGUFError(f"sparse tensor {name}: rows of {n_cols} values are not a multiple of {ROW_MULTIPLE}")
    want = [(rows, n_cols // (4 if value_type == Q.Q4_0 else 2)), (rows, n_cols // 8), (rows, n_cols // BLOCK)]
    types = [Q.I8, Q.I8, Q.F16]
    for plane, shape, qtype in zip(planes, want, types):
        if plane.shape != shape or plane.ggml_type != qtype:
            raise GGUFError(f"sparse plane {plane.name} is {plane.type_name} {plane.shape}, "
                            f"expected {qtype.name} {shape}")
    raw = values.data.view(np.uint8 if value_type == Q.Q4_0 else np.int8)
    return SparseWeight(name, (rows, n_cols), value_type, raw, index.data, scales.data.view(np.uint16))


def from_twin(name: str, data: np.ndarray, value_type: Q, n_cols: int) -> SparseWeight:
    """The compact planes of a 2:4 Q4_0/Q8_0 matrix, data uint8 [rows, row_bytes] (its twin)."""
    values, index, scales = pack_twin(data, value_type, n_cols, name)
    raw = values.view(np.uint8 if value_type == Q.Q4_0 else np.int8)
    return SparseWeight(name, (data.shape[0], n_cols), value_type, raw, index, scales.view(np.uint16))


def _twin_ints(data: np.ndarray, value_type: Q, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale bytes uint8 [rows, nb, 2], stored integers int16 [rows, n_cols]) of a Q4_0/Q8_0 matrix."""
    rows, nb = data.shape[0], n_cols // BLOCK
    if value_type == Q.Q4_0:
        blocks = np.asarray(data).reshape(rows, nb, 18)
        qs = blocks[..., 2:]
        ints = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int16)  # value j, j + 16
    elif value_type == Q.Q8_0:
        blocks = np.asarray(data).reshape(rows, nb, 34)
        ints = blocks[..., 2:].view(np.int8).astype(np.int16)
    else:
        raise GGUFError(f"2:4 sparse weights are Q4_0 or Q8_0, not {value_type.name}")
    return blocks[..., :2], ints.reshape(rows, n_cols)


def nonzero_per_group(data: np.ndarray, value_type: Q, n_cols: int, m: int) -> np.ndarray:
    """int [rows, n_cols / m]: how many weights of each group of m are non-zero."""
    _, ints = _twin_ints(data, value_type, n_cols)
    return (ints != ZERO[value_type]).reshape(data.shape[0], -1, m).sum(-1)


def pack_twin(data: np.ndarray, value_type: Q, n_cols: int, name: str = "weight"):
    """Q4_0/Q8_0 bytes uint8 [rows, row_bytes] with at most 2 non-zeros per group of 4 ->
    (values uint8 [rows, n_cols/4 or n_cols/2], index uint8 [rows, n_cols/8], scales uint8
    [rows, n_cols/16]). A group with fewer than 2 non-zeros keeps a zero at its first free place."""
    if n_cols % ROW_MULTIPLE:
        raise SparsityError(f"{name}: the compact layout needs rows of a multiple of {ROW_MULTIPLE} "
                            f"values, not {n_cols}")
    rows = data.shape[0]
    scales, ints = _twin_ints(data, value_type, n_cols)
    groups = ints.reshape(rows, -1, GROUP)  # [rows, ng, 4]
    nonzero = groups != ZERO[value_type]
    if (nonzero.sum(-1) > 2).any():
        raise SparsityError(f"{name} is not 2:4 sparse: a group of 4 has more than 2 non-zero values")
    # non-zero positions first, then zero ones, each in column order; keep the first two, sorted
    order = np.argsort(np.where(nonzero, 0, GROUP) + np.arange(GROUP), axis=-1, kind="stable")[..., :2]
    pos = np.sort(order, axis=-1).astype(np.uint8)  # [rows, ng, 2]: a < b
    kept = np.take_along_axis(groups, pos.astype(np.intp), axis=-1)  # [rows, ng, 2]
    a, b = pos[..., 0], pos[..., 1]
    index = a[:, 0::2] | (b[:, 0::2] << 2) | (a[:, 1::2] << 4) | (b[:, 1::2] << 6)
    if value_type == Q.Q4_0:  # byte j of a pair of blocks: kept j of the first | of the second << 4
        k = kept.astype(np.uint8).reshape(rows, -1, 2, 16)  # [rows, pairs of blocks, 2, 16]
        values = (k[:, :, 0] | (k[:, :, 1] << 4)).reshape(rows, -1)
    else:
        values = kept.astype(np.int8).reshape(rows, -1).view(np.uint8)
    return (np.ascontiguousarray(values), np.ascontiguousarray(index),
            np.ascontiguousarray(scales).reshape(rows, -1))


def check(gguf: GGUFFile) -> list[str]:
    """`edgellm info --sparsity`: one line per pruned tensor, every group checked against the
    pattern; raises SparsityError naming the first tensor that breaks it."""
    meta = read_metadata(gguf)
    if meta is None:
        return ["sparsity:      none (no edgellm.sparsity metadata)"]
    n, m = meta["n"], meta["m"]
    lines = [f"sparsity:      {n}:{m}, {meta['layout']} layout, {meta['value_type'].name} values, "
             f"method {meta['method']}, {len(meta['tensors'])} tensors"]
    total_groups = total_bytes = total_weights = 0
    for name in meta["tensors"]:
        if meta["layout"] == "compact":
            w = _from_planes(gguf, name, meta["value_type"])
            codes = np.stack([(w.index >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)  # a0 b0 a1 b1
            if (codes[..., 0] >= codes[..., 1]).any() or (codes[..., 2] >= codes[..., 3]).any():
                raise SparsityError(f"{name}: a group's two kept positions are not distinct and ordered")
            groups, nbytes, shape = codes.size // 2, w.nbytes, w.shape
        else:
            t = gguf.tensors[name]
            counts = nonzero_per_group(t.data, t.ggml_type, t.shape[1], m)
            bad = int((counts > n).sum())
            if bad:
                raise SparsityError(f"{name}: {bad} of {counts.size} groups have more than {n} of {m} non-zero")
            groups, nbytes, shape = counts.size, t.data.nbytes, t.shape
        total_groups += groups
        total_bytes += nbytes
        total_weights += shape[0] * shape[1]
        lines.append(f"  {name:<28} {shape[1]}x{shape[0]:<7} {groups:>9} groups ok, "
                     f"{8 * nbytes / (shape[0] * shape[1]):.2f} bits/weight")
    lines.append(f"  all {total_groups:,} groups of {m} hold at most {n} non-zero weights "
                 f"({8 * total_bytes / max(total_weights, 1):.2f} bits/weight in the pruned tensors)")
    return lines
