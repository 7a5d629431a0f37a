"""Calibration for wanda and sparsegpt: what each prunable weight's input looks like on real text.

The model runs in edgellm itself, on the --calib text, in chunks of CHUNK tokens (BOS first, as
perplexity does). Each prunable weight is loaded wrapped in a _RecordingWeight (through
edgellm.sparse.weight_wrapper; nothing in models/ changes), which sees the layer's input
x [n_tokens, n_in] before multiplying:

    feature_norm  ||x_j||_2 over all calibration tokens, float64 [n_in]        (wanda)
    hessian       sum of x x^T over the tokens, float64 [n_in, n_in]            (sparsegpt)

Weights fed the same x (q/k/v, gate/up) share one LayerStats. The statistics come from the dense
model: every layer is pruned from the same one pass ("one-shot"), not layer after layer.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgellm import sparse
from edgellm.converters import options
from edgellm.converters.errors import ConvertError
from edgellm.errors import EdgeLLMError
from edgellm.kernels import matmul

CHUNK = 512  # tokens per forward pass, BOS included
DEFAULT_TOKENS = options.DEFAULT_CALIB_TOKENS  # why 8192: options.py
MIN_TOKENS = 64


@dataclass
class LayerStats:
    sum_sq: np.ndarray  # float64 [n_in]: sum over tokens of x_j^2
    hessian: np.ndarray | None  # float64 [n_in, n_in], or None when not asked for
    n_tokens: int = 0

    @property
    def feature_norm(self) -> np.ndarray:
        return np.sqrt(self.sum_sq)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.sum_sq.shape[0])
        self.sum_sq += np.einsum("ij,ij->j", x, x)
        if self.hessian is not None:
            self.hessian += x.T @ x
        self.n_tokens += x.shape[0]


class _Collector:
    def __init__(self, hessian: bool):
        self.hessian = hessian
        self.by_name: dict[str, LayerStats] = {}
        self.clear()

    def clear(self) -> None:
        self.by_name.clear()
        self._last_x = self._last_stats = None

    def record(self, name: str, x: np.ndarray) -> None:
        if x is self._last_x:  # q/k/v and gate/up take the same array: count it once
            stats = self._last_stats
        else:
            stats = self.by_name.get(name)
            if stats is None:
                n_in = x.shape[-1]
                stats = LayerStats(np.zeros(n_in), np.zeros((n_in, n_in)) if self.hessian else None)
            stats.add(x)
            self._last_x, self._last_stats = x, stats
        self.by_name[name] = stats


class _RecordingWeight:
    """Stands in for a block weight while calibrating: records x, then multiplies as the
    weight it wraps would (the models call matmul(x) on any weight that has one)."""

    def __init__(self, name: str, weight, collector: _Collector):
        self.name, self.weight, self.collector = name, weight, collector
        self.shape = weight.shape

    def matmul(self, x: np.ndarray) -> np.ndarray:
        self.collector.record(self.name, x)
        w = self.weight
        if hasattr(w, "matmul"):
            return w.matmul(x)
        return matmul(np.ascontiguousarray(x, dtype=np.float32), w.data, w.ggml_type, w.n_cols)


def read_calibration_tokens(llm, path: str | os.PathLike, n_tokens: int) -> list[int]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read --calib {path}: {e.strerror if isinstance(e, OSError) else e}") from None
    ids = llm.tokenize(text, bos=False)
    if len(ids) < n_tokens:
        raise ConvertError(f"--calib {path} has {len(ids)} tokens, fewer than the {n_tokens} asked for "
                           "(give a longer text, or a smaller --calib-tokens)")
    return ids[:n_tokens]


def collect(model_path: str | os.PathLike, calib: str | os.PathLike, n_tokens: int, hessian: bool,
            is_prunable, progress: bool = True) -> dict[str, LayerStats]:
    """Run the GGUF model at model_path on n_tokens tokens of the text file calib; statistics of
    every prunable weight's input, by tensor name."""
    import edgellm

    if n_tokens < MIN_TOKENS:
        raise ConvertError(f"--calib-tokens must be at least {MIN_TOKENS}, got {n_tokens}")
    collector = _Collector(hessian)

    def wrap(name, weight):
        return _RecordingWeight(name, weight, collector) if is_prunable(name) else None

    with sparse.weight_wrapper(wrap):
        llm = edgellm.load(model_path, ctx=CHUNK)
    llm.prepare()  # the warm-up passes (garbage in a dry run) before anything counts
    collector.clear()
    ids = read_calibration_tokens(llm, calib, n_tokens)
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    step = CHUNK - (bos is not None)
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    for chunk in tqdm(chunks, desc="calibrating", unit="chunk", disable=not progress, leave=False):
        llm.kv_cache.clear()
        llm._eval(np.asarray(([bos] if bos is not None else []) + chunk, np.int64), all_logits=False)
    if not collector.by_name:
        raise ConvertError("calibration saw no input of a prunable weight")
    return collector.by_name


def collect_for_source(source: Path, calib: str | os.PathLike, n_tokens: int, hessian: bool,
                       is_prunable, progress: bool = True) -> dict[str, LayerStats]:
    """As collect() for a conversion source: a GGUF file runs as it is; a Hugging Face checkpoint
    is first converted to a temporary f16 GGUF (removed afterwards)."""
    if source.is_file():
        return _collect_checked(source, calib, n_tokens, hessian, is_prunable, progress)
    from edgellm.converters.pipeline import convert

    with tempfile.TemporaryDirectory(prefix="edgellm-calib-") as tmp:
        dense = convert(source, Path(tmp) / "dense-f16.gguf", type="f16", progress=False)
        return _collect_checked(dense, calib, n_tokens, hessian, is_prunable, progress)


def _collect_checked(path, calib, n_tokens, hessian, is_prunable, progress):
    try:
        return collect(path, calib, n_tokens, hessian, is_prunable, progress)
    except ConvertError:
        raise
    except EdgeLLMError as e:
        raise ConvertError(f"calibration: the model does not run in edgellm: {e}") from None
