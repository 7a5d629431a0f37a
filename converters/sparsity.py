"""N:M pruning for `edgellm convert --sparsity 2:4`: which weights, how, and how they are stored.

In every group of M consecutive weights of a row (M consecutive input features), N are kept:

- magnitude: the N largest |w|.
- wanda (Sun et al. 2023): the N largest |w_ij| * ||x_j||, x_j input feature j over calibration
  activations (calibrate.py): a small weight on a loud feature matters more than its size says.
- sparsegpt (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with H = X X^T + damping.
  Columns are visited left to right; a column's pruning and quantization error is spread onto the
  columns still to come (row update -err * Hinv[i, i:] / Hinv[i, i], H^-1 in its upper Cholesky
  form), and the kept values are quantized in the same loop, so the compensation also absorbs the
  rounding (GPTQ). Masks are chosen per 32-column quantization block from the updated weights
  (score w^2 / Hinv[j, j]^2), then the block's Q4_0/Q8_0 scale from its kept values.

Pruned: the 2-D weights of the transformer blocks (attention q/k/v/output, FFN gate/up/down).
Embeddings, output and norms stay dense, and so does whatever --dense names.

The result of every method is the Q4_0/Q8_0 "twin": the pruned matrix in the standard type with
the zeros in place. `--sparse-layout dense` writes it as is; `compact` repacks it into kept values,
2-bit positions and scales (edgellm/sparse.py, docs/sparse-format.md), so both layouts hold the
same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q
from tqdm import tqdm

from edgellm import sparse
from edgellm.converters import options
from edgellm.converters.errors import ConvertError
from edgellm.converters.quantize import quantize_rows
from edgellm.converters.writer import TensorPlan

METHODS = options.METHODS  # the first is the default
LAYOUTS = sparse.LAYOUTS
PRUNABLE = re.compile(r"^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
QUANT_BLOCK = 32
SPARSEGPT_BLOCK = 128  # columns per lazy batch of updates (the paper's B)
SPARSEGPT_DAMP = 0.01  # damping: this fraction of H's mean diagonal is added to it


@dataclass
class SparsityOptions:
    n: int  # kept per group
    m: int  # group size
    method: str = METHODS[0]
    layout: str = "compact"
    dense: str | None = None  # --dense: layers and/or tensor names kept dense

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"


def parse_sparsity(text: str) -> tuple[int, int]:
    """"2:4" -> (2, 4); anything but N:M with 0 < N < M is a ConvertError."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ConvertError(f"--sparsity must be N:M with 0 < N < M (e.g. 2:4), got {text!r}")
    n, m = int(match[1]), int(match[2])
    if QUANT_BLOCK % m:
        raise ConvertError(f"--sparsity {n}:{m}: groups of {m} do not divide the rows' "
                           f"{QUANT_BLOCK}-value blocks (use M = 2, 4, 8, 16 or 32)")
    return n, m


def check_options(opts: SparsityOptions, qtype: Q, calib: str | None) -> None:
    if opts.method not in METHODS:
        raise ConvertError(f"--method must be one of {', '.join(METHODS)}, got {opts.method!r}")
    if opts.layout not in LAYOUTS:
        raise ConvertError(f"--sparse-layout must be one of {', '.join(LAYOUTS)}, got {opts.layout!r}")
    if qtype not in (Q.Q4_0, Q.Q8_0):
        raise ConvertError(f"--sparsity needs --type q4_0 or q8_0, got {qtype.name.lower()}")
    if opts.layout == "compact" and (opts.n, opts.m) != (2, 4):
        raise ConvertError(f"the compact layout stores 2:4 only; use --sparse-layout dense for {opts.pattern}")
    if opts.method != "magnitude" and calib is None:
        raise ConvertError(f"--method {opts.method} needs calibration text (--calib FILE); "
                           "--method magnitude needs none")


def dense_selector(spec: str | None, names: list[str]) -> Callable[[str], bool]:
    """--dense "0,17,attn" -> is_dense(name). Items: a layer (3), a range of layers (0-2), or a
    piece of a tensor name (attn, ffn_down, blk.5.attn_v). An item that matches none of `names`
    (the prunable tensors) is a ConvertError: a typo must not silently prune everything."""
    if not spec:
        return lambda name: False
    layers, pieces = set(), []
    for item in (s.strip() for s in spec.split(",")):
        if re.fullmatch(r"\d+", item):
            layers.add(int(item))
        elif re.fullmatch(r"\d+-\d+", item):
            a, b = (int(s) for s in item.split("-"))
            layers.update(range(a, b + 1))
        elif item:
            pieces.append(item)
        else:
            raise ConvertError(f"--dense {spec!r} has an empty item")

    def layer(name: str) -> int:
        return int(PRUNABLE.match(name)[1])

    def is_dense(name: str) -> bool:
        return layer(name) in layers or any(p in name for p in pieces)

    for il in layers:
        if not any(layer(n) == il for n in names):
            raise ConvertError(f"--dense: there is no layer {il} (layers 0-{max(map(layer, names), default=0)})")
    for p in pieces:
        if not any(p in n for n in names):
            raise ConvertError(f"--dense {p!r} matches no prunable tensor "
                               "(blk.N.attn_q/k/v/output.weight, blk.N.ffn_gate/up/down.weight)")
    return is_dense


# --- the pruning methods: float32 W [rows, cols] in, a keep-mask or the twin's bytes out ---------

def keep_largest(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """bool [rows, cols]: True for the n highest scores in each group of m columns (ties: the
    leftmost wins)."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep.reshape(rows, cols)


def prune_magnitude(w: np.ndarray, n: int, m: int) -> np.ndarray:
    return np.where(keep_largest(np.abs(w), n, m), w, np.float32(0))


def prune_wanda(w: np.ndarray, feature_norm: np.ndarray, n: int, m: int) -> np.ndarray:
    """feature_norm float [cols]: ||x_j||_2 over the calibration tokens."""
    return np.where(keep_largest(np.abs(w) * feature_norm[None, :], n, m), w, np.float32(0))


def _block_scale(kept: np.ndarray, qtype: Q) -> np.ndarray:
    """f16-rounded Q4_0/Q8_0 scales, as float64 [rows], for one block's kept values [rows, 32]
    (ggml's rule: Q4_0 d = (value of largest |.|) / -8, Q8_0 d = max|.| / 127)."""
    if qtype == Q.Q4_0:
        pick = np.take_along_axis(kept, np.abs(kept).argmax(-1)[:, None], -1)[:, 0]
        d = pick / -8.0
    else:
        d = np.abs(kept).max(-1) / 127.0
    return d.astype(np.float16).astype(np.float64)


def _quantize_column(w: np.ndarray, d: np.ndarray, qtype: Q) -> np.ndarray:
    """Integers q (float64) for the column w given the block scales d (0 where d is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d != 0, w / d, 0.0)
    lo, hi = (-8, 7) if qtype == Q.Q4_0 else (-127, 127)
    return np.clip(np.round(q), lo, hi)


def prune_sparsegpt(w: np.ndarray, hessian: np.ndarray, n: int, m: int, qtype: Q) -> np.ndarray:
    """SparseGPT with quantization in the loop; returns the twin's bytes uint8 [rows, row_bytes].

    w float32 [rows, cols]; hessian float64 [cols, cols] = sum over calibration tokens of x x^T.
    """
    rows, cols = w.shape
    W = w.astype(np.float64)
    H = hessian.astype(np.float64, copy=True)
    dead = np.diag(H) == 0  # features never active: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(cols)] += SPARSEGPT_DAMP * np.mean(np.diag(H))
    try:
        Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: Hinv = U^T U
    except np.linalg.LinAlgError:
        raise ConvertError("sparsegpt: the calibration Hessian is not positive definite "
                           "(too little or degenerate calibration text)") from None
    ints = np.zeros((rows, cols), np.int16)
    scales = np.zeros((rows, cols // QUANT_BLOCK), np.float64)
    keep = np.zeros((rows, cols), bool)
    for i1 in range(0, cols, SPARSEGPT_BLOCK):
        i2 = min(i1 + SPARSEGPT_BLOCK, cols)
        W1, Hinv1 = W[:, i1:i2].copy(), Hinv[i1:i2, i1:i2]
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % QUANT_BLOCK == 0:  # choose this block's masks and scale from the updated weights
                span = slice(i, i + QUANT_BLOCK)
                diag = np.diag(Hinv1)[span]
                keep[:, col:col + QUANT_BLOCK] = keep_largest(W1[:, span] ** 2 / diag[None, :] ** 2, n, m)
                d = _block_scale(np.where(keep[:, col:col + QUANT_BLOCK], W1[:, span], 0.0), qtype)
                scales[:, col // QUANT_BLOCK] = d
            q = _quantize_column(W1[:, i], d, qtype) * keep[:, col]
            ints[:, col] = q
            err = (W1[:, i] - q * d) / Hinv1[i, i]
            W1[:, i:] -= np.outer(err, Hinv1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return encode_twin(scales, ints, qtype)


def encode_twin(scales: np.ndarray, ints: np.ndarray, qtype: Q) -> np.ndarray:
    """Q4_0/Q8_0 blocks from scales float [rows, nb] and integers [rows, cols] (Q4_0: -8..7)."""
    rows, cols = ints.shape
    nb = cols // QUANT_BLOCK
    d = scales.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    q = ints.reshape(rows, nb, QUANT_BLOCK)
    if qtype == Q.Q4_0:
        u = (q + 8).astype(np.uint8)
        qs = u[..., :16] | (u[..., 16:] << 4)
    else:
        qs = q.astype(np.int8).view(np.uint8)
    return np.concatenate([d, qs], axis=-1).reshape(rows, -1)


# --- wiring into the converter's tensor plans ---------------------------------------------------

@dataclass
class _Pruned:
    """One pruned weight, computed when its first output tensor is written and dropped after its
    last (the compact layout writes three tensors from one pruning)."""

    plan: TensorPlan
    prune: Callable[[np.ndarray], np.ndarray]  # float32 W -> twin bytes
    on_done: Callable[[str], None]
    users: int = 1
    _twin: np.ndarray | None = None
    _planes: tuple | None = None

    def twin(self) -> np.ndarray:
        if self._twin is None:
            self._twin = self.prune(np.ascontiguousarray(self.plan.read(0, self.plan.n_rows), np.float32))
            if self.plan.release is not None:
                self.plan.release()
        return self._twin

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._planes is None:
            self._planes = sparse.pack_twin(self.twin(), self.plan.out_type, self.plan.n_cols, self.plan.name)
        return self._planes

    def done(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._twin = self._planes = None
            self.on_done(self.plan.name)


def sparsify(tensors: list[TensorPlan], opts: SparsityOptions, stats: dict | None,
             progress: bool = True) -> tuple[list[TensorPlan], list[str], Callable[[], None]]:
    """The plans with every prunable weight pruned as `opts` says: (new plans, pruned names,
    close) where close() ends the progress bar. stats: calibrate.collect()'s, None for magnitude."""
    prunable = [t for t in tensors if PRUNABLE.match(t.name)]
    is_dense = dense_selector(opts.dense, [t.name for t in prunable])
    chosen = [t for t in prunable if not is_dense(t.name)]
    for t in chosen:
        if t.n_cols % opts.m:
            raise ConvertError(f"{t.name}: rows of {t.n_cols} values are not whole groups of {opts.m}")
        if t.out_type not in (Q.Q4_0, Q.Q8_0):
            raise ConvertError(f"{t.name}: its rows of {t.n_cols} values are not whole "
                               f"{QUANT_BLOCK}-value blocks, so it cannot be stored sparse")
        if opts.layout == "compact" and t.n_cols % sparse.ROW_MULTIPLE:
            raise ConvertError(f"{t.name}: the compact layout needs rows of a multiple of "
                               f"{sparse.ROW_MULTIPLE} values, not {t.n_cols} (use --sparse-layout "
                               f"dense, or --dense for this tensor)")
        if stats is not None and t.name not in stats:
            raise ConvertError(f"calibration saw no input for {t.name}")
    layers = sorted({int(PRUNABLE.match(t.name)[1]) for t in chosen})
    left = {il: sum(1 for t in chosen if int(PRUNABLE.match(t.name)[1]) == il) for il in layers}
    bar = tqdm(total=len(layers), unit="layer", desc=f"pruning {opts.pattern} ({opts.method})",
               disable=not progress, leave=False, position=1)

    def on_done(name: str) -> None:
        il = int(PRUNABLE.match(name)[1])
        left[il] -= 1
        if left[il] == 0:
            bar.update(1)

    out = []
    chosen_names = {t.name for t in chosen}
    for t in tensors:
        if t.name not in chosen_names:
            out.append(t)
            continue
        job = _Pruned(t, _pruner(t, opts, stats), on_done, users=1 if opts.layout == "dense" else 3)
        out.extend(_dense_twin(job) if opts.layout == "dense" else _compact_planes(job))
    return out, [t.name for t in chosen], bar.close


def _pruner(t: TensorPlan, opts: SparsityOptions, stats: dict | None) -> Callable[[np.ndarray], np.ndarray]:
    n, m, qtype = opts.n, opts.m, t.out_type
    if opts.method == "sparsegpt":
        return lambda w: prune_sparsegpt(w, stats[t.name].hessian, n, m, qtype)
    if opts.method == "wanda":
        return lambda w: quantize_rows(prune_wanda(w, stats[t.name].feature_norm, n, m), qtype)
    return lambda w: quantize_rows(prune_magnitude(w, n, m), qtype)


def _dense_twin(job: _Pruned) -> list[TensorPlan]:
    t = job.plan

    def read_stored(a: int, b: int) -> np.ndarray:
        rows = job.twin()[a:b]
        if b >= t.n_rows:
            job.done()
        return rows

    return [TensorPlan(t.name, t.shape, t.source_type, t.read, t.out_type, read_stored=read_stored,
                       stored_type=t.out_type)]


def _compact_planes(job: _Pruned) -> list[TensorPlan]:
    t = job.plan
    widths = [t.n_cols // (4 if t.out_type == Q.Q4_0 else 2), t.n_cols // 8, t.n_cols // QUANT_BLOCK]
    plans = []
    for k, (suffix, width, qtype) in enumerate(zip(sparse.PLANES, widths, (Q.I8, Q.I8, Q.F16))):
        def read_stored(a: int, b: int, k=k) -> np.ndarray:
            rows = job.planes()[k][a:b]
            if b >= t.n_rows:
                job.done()
            return rows

        def unreadable(a: int, b: int):  # planes exist only as bytes
            raise AssertionError("a sparse plane is read through read_stored")

        plans.append(TensorPlan(t.name + suffix, (t.n_rows, width), f"{t.source_type}:2:4", unreadable,
                                qtype, read_stored=read_stored, stored_type=qtype))
    return plans


def add_metadata(writer, opts: SparsityOptions, qtype: Q, names: list[str]) -> None:
    writer.add_string(sparse.PREFIX + "pattern", opts.pattern)
    writer.add_string(sparse.PREFIX + "layout", opts.layout)
    writer.add_string(sparse.PREFIX + "value_type", qtype.name.lower())
    writer.add_string(sparse.PREFIX + "method", opts.method)
    writer.add_array(sparse.PREFIX + "tensors", names)
