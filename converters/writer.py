"""Stream tensors into a GGUF file that appears only when it is complete.

The metadata and the tensor directory go first (gguf.GGUFWriter needs every tensor's name, shape
and type before any data), then each tensor is read, converted and written in chunks of rows, so
peak memory is about one output tensor plus one chunk of float32 rows, never the model. All of it
goes to a hidden temporary file next to OUT, renamed over OUT at the very end: an error or Ctrl+C
leaves OUT as it was and removes the temporary file.
"""

from __future__ import annotations

import os
import sys
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from tqdm import tqdm

from edgellm.converters.errors import ConvertError
from edgellm.converters.quantize import quantize_rows, row_bytes

CHUNK_VALUES = 1 << 22  # rows are converted ~4M values (16 MB of float32) at a time


@dataclass
class TensorPlan:
    """One tensor of the output: where its values come from and what type they become."""

    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order: (n_rows, n_cols) for a matrix, (n,) for a vector
    source_type: str  # how the source stores it ("BF16", "Q4_K", "generated"), for --dry-run
    read: Callable[[int, int], np.ndarray]  # rows [a, b) as float32 [b - a, n_cols], transformed
    out_type: GGMLQuantizationType = GGMLQuantizationType.F32  # chosen by quantize.choose_type
    # GGUF sources: rows [a, b) as stored (uint8) and their type. A tensor whose stored type is
    # already `out_type` is copied byte for byte instead of making a lossy round trip.
    read_stored: Callable[[int, int], np.ndarray] | None = None
    stored_type: GGMLQuantizationType | None = None
    release: Callable[[], None] | None = None  # called once the tensor is encoded (see hf.py)

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.n_rows * row_bytes(self.n_cols, self.out_type)

    def encoded(self) -> np.ndarray:
        """uint8 [n_rows, row_bytes]: the whole tensor in `out_type`, built a chunk at a time."""
        out = np.empty((self.n_rows, row_bytes(self.n_cols, self.out_type)), np.uint8)
        step = max(1, CHUNK_VALUES // self.n_cols)
        for a in range(0, self.n_rows, step):
            b = min(a + step, self.n_rows)
            if self.read_stored is not None and self.stored_type == self.out_type:
                out[a:b] = self.read_stored(a, b)
            else:
                out[a:b] = quantize_rows(np.ascontiguousarray(self.read(a, b), np.float32), self.out_type)
        if self.release is not None:
            self.release()
        return out


def list_plan(tensors: list[TensorPlan], file: TextIO | None = None) -> None:
    """The --dry-run table: name, shape (ggml order, as llama.cpp prints it), types, size."""
    file = file or sys.stdout
    width = max((len(t.name) for t in tensors), default=4)
    print(f"{'tensor':<{width}}  {'shape':<20} {'source':>9} -> {'type':<5} {'size':>10}", file=file)
    for t in tensors:
        shape = "{" + ", ".join(str(n) for n in reversed(t.shape)) + "}"
        print(f"{t.name:<{width}}  {shape:<20} {t.source_type:>9} -> {t.out_type.name:<5} "
              f"{_human(t.nbytes):>10}", file=file)
    print(f"{len(tensors)} tensors, {_human(sum(t.nbytes for t in tensors))} of tensor data", file=file)


def write_gguf(out: Path, writer: GGUFWriter, tensors: list[TensorPlan], progress: bool = True) -> None:
    """Write `writer`'s metadata and `tensors` to `out`, atomically (see the module docstring)."""
    for t in tensors:  # the numpy dtype is not consulted when raw_dtype is given (unless uint8)
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.out_type)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    bar = tqdm(total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True, unit_divisor=1024,
               desc=out.name, disable=not progress, leave=False)
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            bar.set_postfix_str(f"{i + 1}/{len(tensors)} {t.name}", refresh=False)
            writer.write_tensor_data(t.encoded())
            bar.update(t.nbytes)
        writer.close()
        with open(tmp, "rb+") as f:  # the data must be on disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise ConvertError(f"writing {out} failed: {e.strerror or e}") from None
    finally:  # also on KeyboardInterrupt: no partial file is left behind
        bar.close()
        writer.close()
        tmp.unlink(missing_ok=True)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
