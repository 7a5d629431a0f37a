"""Read a .safetensors file one tensor (or a few rows of one) at a time, from a memory map.

The format (https://github.com/huggingface/safetensors):

    header_len u64 | header: JSON {name: {dtype, shape, data_offsets: [begin, end]}, ...} | data

Offsets are relative to the start of the data. We parse it ourselves rather than through
`safetensors.safe_open` for three reasons: numpy has no bfloat16, and most checkpoints are bf16
(safe_open would need torch just to widen them); a truncated download should fail with the name
of the tensor that is cut off, before anything is written; and mapping the file keeps peak memory
near the rows being converted rather than the model.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from edgellm.converters.errors import ConvertError

MAX_HEADER = 100 << 20  # the reference implementation refuses headers above 100 MB too

# Stored dtype -> (numpy dtype of the stored bits, bytes per element). Integer and fp8 tensors
# belong to quantized checkpoints (GPTQ, AWQ, fp8), which we do not dequantize.
DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}


@dataclass
class StoredTensor:
    """One tensor of a safetensors file; `rows` widens the requested rows to float32."""

    name: str
    dtype: str  # "F32", "F16" or "BF16"
    shape: tuple[int, ...]  # as stored: (rows..., n_cols), (n,) for vectors
    data: np.ndarray  # stored bits as a read-only [n_rows, n_cols] view into the mmap
    _map: mmap.mmap
    _span: tuple[int, int]  # (first byte, end) in the file

    @property
    def n_rows(self) -> int:
        return self.data.shape[0]

    def rows(self, index: slice | np.ndarray) -> np.ndarray:
        """float32 [k, n_cols]: the rows picked by `index` (a slice or an array of row numbers)."""
        bits = self.data[index]
        if self.dtype == "BF16":  # bfloat16 is the top half of a float32: widening is exact
            return (bits.astype(np.uint32) << 16).view(np.float32)
        return bits.astype(np.float32)

    def release(self) -> None:
        """Unmap the pages read so far: the file stays in the page cache, but no longer counts
        in this process's memory, which stays near one tensor instead of growing to the model."""
        start = self._span[0] - self._span[0] % mmap.PAGESIZE
        if hasattr(self._map, "madvise") and self._span[1] > start:  # Linux and macOS have it
            self._map.madvise(mmap.MADV_DONTNEED, start, self._span[1] - start)


class SafetensorsFile:
    """A .safetensors file, mapped read-only; `tensors` maps names to StoredTensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        name = os.path.basename(self.path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise ConvertError(f"{name} is truncated: {size} bytes, not even a header")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ConvertError(f"cannot read {self.path}: {e.strerror or e}") from None
        (header_len,) = struct.unpack_from("<Q", self._mmap, 0)
        if header_len > min(MAX_HEADER, size - 8):
            raise ConvertError(
                f"{name} is truncated or not a safetensors file: header of {header_len} bytes "
                f"in a {size}-byte file"
            )
        try:
            header = json.loads(self._mmap[8 : 8 + header_len])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConvertError(f"{name} is corrupt: its header is not valid JSON") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{name} is corrupt: its header is not a JSON object")
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        self.tensors = {
            tname: self._tensor(name, tname, entry, data_start, size) for tname, entry in header.items()
        }

    def _tensor(self, fname: str, name: str, entry, data_start: int, size: int) -> StoredTensor:
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{fname} is corrupt: bad header entry for {name}") from None
        if dtype not in DTYPES:
            raise ConvertError(
                f"{name} in {fname} is {dtype}; only F32, F16 and BF16 checkpoints can be "
                "converted (not GPTQ/AWQ/fp8-quantized ones)"
            )
        np_dtype, itemsize = DTYPES[dtype]
        n_cols = shape[-1] if shape else 1
        n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        nbytes = n_rows * n_cols * itemsize
        if end - begin != nbytes:
            raise ConvertError(f"{fname} is corrupt: {name} {list(shape)} {dtype} should take "
                               f"{nbytes} bytes, its offsets span {end - begin}")
        if data_start + end > size:
            raise ConvertError(
                f"{fname} is truncated: tensor {name} ends at byte {data_start + end} but the file "
                f"has {size} (an interrupted download?)"
            )
        data = np.frombuffer(self._mmap, dtype=np_dtype, count=n_rows * n_cols, offset=data_start + begin)
        span = (data_start + begin, data_start + end)
        return StoredTensor(name, dtype, shape, data.reshape(n_rows, n_cols), self._mmap, span)
