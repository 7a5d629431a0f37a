"""Calibration for wanda and sparsegpt: what each prunable weight's input looks like on real text.

The model runs in edgellm itself, on the --calib text, in chunks of CHUNK tokens (BOS first, as
perplexity does). Each Linear of the transformer blocks is wrapped from the outside (nothing in
models/ changes) so that its input x [n_tokens, n_in] is seen before it is multiplied:

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

from edgellm.converters.errors import ConvertError
from edgellm.errors import EdgeLLMError

CHUNK = 512  # tokens per forward pass, BOS included
DEFAULT_TOKENS = 2048
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


class _Recorder:
    """Stands in for a Linear: records its input, then lets it multiply."""

    def __init__(self, linear, name: str, collector: _Collector):
        self.linear, self.name, self.collector = linear, name, collector

    def __call__(self, x):
        self.collector.record(self.name, x)
        return self.linear(x)


def _wrap_linears(model, collector: _Collector, is_prunable) -> int:
    """Replace every block Linear whose weight is prunable by a _Recorder; returns how many."""
    count = 0
    for block in model.blocks:
        owners = [block] + [v for v in vars(block).values() if hasattr(v, "__dict__")]
        for owner in owners:
            for attr, value in list(vars(owner).items()):
                name = getattr(getattr(value, "weight", None), "name", None)
                if callable(value) and isinstance(name, str) and is_prunable(name):
                    setattr(owner, attr, _Recorder(value, name, collector))
                    count += 1
    return count


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
    llm = edgellm.load(model_path, ctx=CHUNK)
    ids = read_calibration_tokens(llm, calib, n_tokens)
    collector = _Collector(hessian)
    if _wrap_linears(llm.model, collector, is_prunable) == 0:
        raise ConvertError("calibration found no prunable Linear layers in the model")
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    step = CHUNK - (bos is not None)
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    for chunk in tqdm(chunks, desc="calibrating", unit="chunk", disable=not progress, leave=False):
        llm.kv_cache.clear()
        llm._eval(np.asarray(([bos] if bos is not None else []) + chunk, np.int64), all_logits=False)
    return collector.by_name


def collect_for_source(source: Path, calib: str | os.PathLike, n_tokens: int, hessian: bool,
                       is_prunable, progress: bool = True) -> dict[str, LayerStats]:
    """As collect() for a conversion source: a GGUF file runs as it is; a Hugging Face checkpoint
    is first converted to a temporary f16 GGUF (removed afterwards)."""
    if source.is_file():
        return _collect_checked(source, calib, n_tokens, hessian, is_prunable, progress)
    from edgellm.converters.convert import convert

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
