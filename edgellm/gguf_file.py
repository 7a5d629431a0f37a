"""Read a GGUF file: metadata and memory-mapped tensors, every length checked before it is used.

The format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv      x (key: str, value_type: u32, value)
    n_tensors x (name: str, n_dims: u32, ne: u64[n_dims], ggml_type: u32, offset: u64)
    padding to `general.alignment` (32), then the tensor data; a tensor's offset is relative to it.

The ggml types and their block sizes are kernels/ggml_types.py's (the gguf package's values;
loading a model does not import that package). We parse the header ourselves rather than
through `gguf.GGUFReader` because that reader builds a Python object per array element: it
takes ~20 s to open a file with a 262k-token vocabulary, this takes ~0.2 s. A model file is untrusted input, so every count, length and offset is checked against the
bytes that remain before anything is sliced or allocated.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.kernels.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from edgellm.kernels.jit import njit

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME, including the terminating zero in C
DEFAULT_ALIGNMENT = 32


class GGUFValueType(IntEnum):
    """A metadata value's type (gguf.GGUFValueType's values)."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12

# Fixed-size scalar value types: (struct format, numpy dtype).
_SCALARS = {
    GGUFValueType.UINT8: ("<B", np.uint8),
    GGUFValueType.INT8: ("<b", np.int8),
    GGUFValueType.UINT16: ("<H", np.uint16),
    GGUFValueType.INT16: ("<h", np.int16),
    GGUFValueType.UINT32: ("<I", np.uint32),
    GGUFValueType.INT32: ("<i", np.int32),
    GGUFValueType.FLOAT32: ("<f", np.float32),
    GGUFValueType.BOOL: ("<?", np.bool_),
    GGUFValueType.UINT64: ("<Q", np.uint64),
    GGUFValueType.INT64: ("<q", np.int64),
    GGUFValueType.FLOAT64: ("<d", np.float64),
}


class GGUFError(EdgeLLMError, ValueError):
    """The file is not a GGUF file we can use; the message names the problem in one line."""


@dataclass
class Tensor:
    """One tensor, its bytes still in the mapped file.

    `shape` is in numpy order (outermost first): a ggml weight with ne = [n_in, n_out] has
    shape (n_out, n_in), one row per output feature. `data` is the raw bytes as uint8
    [rows, row_bytes], rows = product of all but the last dimension.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    data: np.ndarray  # uint8 [rows, row_bytes], read-only view into the mmap
    file: GGUFFile | None = field(default=None, repr=False, compare=False)

    def release_pages(self, part: np.ndarray) -> None:
        """part (a view of data) has been copied out: drop its pages from this process's resident
        memory (the file's release_pages); a read faults them back in."""
        if self.file is not None:
            self.file.release_pages(part)

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return self.data.shape[0]

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    def array(self) -> np.ndarray:
        """The values of an F32/F16 tensor as a typed numpy view in `shape` (no copy)."""
        dtypes = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
        if self.ggml_type not in dtypes:
            raise GGUFError(f"tensor {self.name} is {self.type_name}, not F32/F16")
        return self.data.view(dtypes[self.ggml_type]).reshape(self.shape)


class _Cursor:
    """Reads little-endian values from a buffer, refusing to step past its end."""

    def __init__(self, buf: memoryview, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"file has {self.size}"
            )

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        # Vocabularies may hold byte sequences that are not valid UTF-8; keep them round-trippable.
        return raw.decode("utf-8", errors="surrogateescape")

    def strings(self, count: int, what: str) -> StringArray:
        """A string array: the vocabulary's 100k+ tokens, kept as one buffer of their bytes (a
        Python str per token would take ~20 MB more for 262k tokens). The lengths are walked in
        numba; where a string runs past the end, the loop below finds it and names it."""
        blob, offsets, end = _join_strings(np.frombuffer(self.buf, np.uint8, count=self.size), self.pos, count)
        if end >= 0:
            self.pos = end
            return StringArray(blob, offsets)
        if end == _TOO_LARGE:
            raise GGUFError(f"string array {what} holds more than {_MAX_BLOB - 1} bytes")
        for _ in range(count):  # only to name the string: need() raises there
            self.need(8, f"length of a string in {what}")
            (n,) = struct.unpack_from("<Q", self.buf, self.pos)
            self.pos += 8
            self.need(n, f"a string in {what}")
            self.pos += n
        raise GGUFError(f"corrupt string array {what}")

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            value = self.scalar(_SCALARS[vtype][0], what)
            return bool(value) if vtype == GGUFValueType.BOOL else value
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            return self.array(what)
        raise GGUFError(f"unknown metadata value type {vtype} for {what}")

    def array(self, what: str) -> Any:
        etype = self.u32(f"element type of {what}")
        count = self.u64(f"element count of {what}")
        if etype in _SCALARS:
            fmt, dtype = _SCALARS[etype]
            nbytes = count * struct.calcsize(fmt)
            self.need(nbytes, f"{count} elements of {what}")
            values = np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"),
                                   count=count, offset=self.pos)
            self.pos += nbytes
            return values
        if etype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            # Each element takes at least 8 bytes (a length or a header): check the count first so
            # that an absurd count fails here instead of looping or allocating.
            self.need(count * 8, f"{count} elements of {what}")
            if etype == GGUFValueType.STRING:
                return self.strings(count, what)
            return [self.value(etype, what) for _ in range(count)]
        raise GGUFError(f"unknown array element type {etype} in {what}")


@njit(cache=True, nogil=True, inline="always")
def _u48(data, p):
    """The low 6 bytes of the little-endian u64 at data[p]."""
    n = 0
    for b in range(6):
        n |= np.int64(data[p + b]) << (8 * b)
    return n


# A string array's bytes, joined, are indexed by int32 offsets (half the memory of int64: 1 MiB
# for a 262k-token vocabulary); more than 2 GiB of strings is no vocabulary.
_MAX_BLOB = 1 << 31
_TOO_LARGE = -2


@njit(cache=True, nogil=True)
def _join_strings(data, pos, count):
    """count length-prefixed (u64 little-endian) strings from data[pos:]: their bytes joined, the
    offsets of each (int32, count + 1, the last is the end), and the position after the last
    string; end -1 if one runs past the data, _TOO_LARGE if they hold _MAX_BLOB bytes or more."""
    size = data.size
    total = 0
    p = pos
    for _ in range(count):
        if p + 8 > size or data[p + 7] != 0 or data[p + 6] != 0:  # more than 2^48: absurd
            return np.empty(0, np.uint8), np.zeros(1, np.int32), -1
        n = _u48(data, p)
        p += 8
        if n > size - p:
            return np.empty(0, np.uint8), np.zeros(1, np.int32), -1
        total += n
        p += n
    if total >= _MAX_BLOB:
        return np.empty(0, np.uint8), np.zeros(1, np.int32), _TOO_LARGE
    blob = np.empty(total, np.uint8)
    offsets = np.empty(count + 1, np.int32)
    p, q = pos, 0
    for i in range(count):
        n = _u48(data, p)
        p += 8
        offsets[i] = q
        for j in range(n):  # a loop: a slice assignment compiles for 2 s
            blob[q + j] = data[p + j]
        q += n
        p += n
    offsets[count] = q
    return blob, offsets, p


class StringArray(Sequence):
    """A read-only sequence of str kept as bytes: blob holds every string's UTF-8 bytes back to
    back, string i is blob[offsets[i]:offsets[i + 1]]. Bytes that are not UTF-8 come out
    surrogate-escaped, so that encoding a string back gives the bytes of the file."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob = blob  # uint8 [total bytes]
        self.offsets = offsets  # int32 [n + 1]

    @classmethod
    def from_strings(cls, strings) -> StringArray:
        raw = [s.encode("utf-8", "surrogateescape") for s in strings]
        lengths = np.array([len(r) for r in raw], np.int64)
        if lengths.sum() >= _MAX_BLOB:
            raise GGUFError(f"strings hold more than {_MAX_BLOB - 1} bytes")
        offsets = np.zeros(len(raw) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:], dtype=np.int32)
        return cls(np.frombuffer(b"".join(raw), np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        """String i's bytes as in the file."""
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"string {i} of {n}")
        return self.raw(i % n).decode("utf-8", "surrogateescape")

    def __eq__(self, other) -> bool:
        if isinstance(other, str) or not isinstance(other, Sequence):
            return NotImplemented
        return len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"StringArray([{head}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped.

    `metadata` maps keys to Python values (int, float, bool, str; numeric arrays as numpy
    arrays, string arrays as StringArray: a sequence of str). `tensors` maps names to `Tensor`s in file order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise GGUFError(f"not a GGUF file: only {size} bytes")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise GGUFError("no such file") from None
        except IsADirectoryError:
            raise GGUFError("is a directory, not a GGUF file") from None
        except PermissionError:
            raise GGUFError("permission denied") from None
        self.file_size = size
        # 2 MiB pages for the weights where Linux can give them (transparent huge pages: a file
        # read into the page cache after this, on a filesystem with large folios such as ext4 or
        # XFS): each decode step streams every weight, and 4 KiB pages cost it a page walk per
        # page, dear in a VM (nested paging): the output matrix read 20 instead of 27 GB/s.
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._mmap.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # a kernel without THP
                pass
        self._base = np.frombuffer(self._mmap, np.uint8)  # where the mapping starts (release_pages)
        self._parse(memoryview(self._mmap))

    def _parse(self, buf: memoryview) -> None:
        cur = _Cursor(buf, self.file_size)
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file: magic is {magic!r}, expected b'GGUF'")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in (2, 3):
                raise GGUFError("big-endian GGUF files are not supported")
            raise GGUFError(f"unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Smallest possible entries: a KV is >= 8+1+4 bytes, a tensor info >= 8+1+4+8+4+8.
        if n_kv * 13 > self.file_size or n_tensors * 33 > self.file_size:
            raise GGUFError(
                f"truncated or corrupt header: {n_tensors} tensors and {n_kv} metadata entries "
                f"cannot fit in {self.file_size} bytes"
            )

        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of {key}")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key}")
            self.metadata[key] = cur.value(vtype, key)

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"general.alignment must be a power of two, got {alignment!r}")

        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            if not name or len(name.encode("utf-8", "surrogateescape")) >= MAX_NAME:
                raise GGUFError(f"tensor #{i} has an empty or too long name ({name[:80]!r})")
            n_dims = cur.u32(f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"tensor {name} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            ne = [cur.u64(f"dimension {d} of {name}") for d in range(n_dims)]
            ggml_type = cur.u32(f"type of {name}")
            offset = cur.u64(f"data offset of {name}")
            infos.append((name, ne, ggml_type, offset))

        data_start = -(-cur.pos // alignment) * alignment
        self.header_bytes = cur.pos
        self.tensors: dict[str, Tensor] = {}
        for name, ne, ggml_type, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"duplicate tensor name {name}")
            self.tensors[name] = self._tensor(buf, name, ne, ggml_type, data_start + offset,
                                              offset % alignment)

    def _tensor(self, buf, name, ne, ggml_type, start, misalign) -> Tensor:
        try:
            qtype = GGMLQuantizationType(ggml_type)
        except ValueError:
            raise GGUFError(f"tensor {name} has unknown ggml type {ggml_type}") from None
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if any(n <= 0 or n >= 1 << 40 for n in ne):
            raise GGUFError(f"tensor {name} has an invalid shape {ne}")
        if ne[0] % block_size:
            raise GGUFError(
                f"tensor {name}: row length {ne[0]} is not a multiple of the "
                f"{qtype.name} block size {block_size}"
            )
        n_rows = 1
        for n in ne[1:]:
            n_rows *= n
        row_bytes = ne[0] // block_size * type_size
        nbytes = n_rows * row_bytes
        if misalign:
            raise GGUFError(f"tensor {name} data offset is not aligned")
        if start + nbytes > self.file_size:
            raise GGUFError(
                f"truncated or corrupt: tensor {name} ({nbytes} bytes at offset {start}) "
                f"ends past the end of the file ({self.file_size} bytes)"
            )
        data = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=start)
        return Tensor(name, tuple(reversed(ne)), qtype, data.reshape(n_rows, row_bytes), self)

    def release_pages(self, part: np.ndarray) -> None:
        """Drop the mapped pages that lie wholly inside part (a view into this file) from this
        process's resident memory (MADV_DONTNEED: the page cache keeps them, a read faults them
        back): for bytes copied out, such as weights repacked at load. Anything else is ignored."""
        base = self._base.ctypes.data
        first, last = part.ctypes.data - base, part.ctypes.data + part.nbytes - base
        if part.nbytes == 0 or first < 0 or last > self.file_size or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start, end = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE, last // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def release_header(self) -> None:
        """Drop the header's pages (metadata and tensor infos; mostly a vocabulary, ~5 MiB for
        Gemma 3's) from this process's resident memory, once what is copied out of them has been:
        the data is not lost, a view that reads them again (the token scores) faults them back in
        from the page cache."""
        end = self.header_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        if end and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED, 0, end)

    # Metadata helpers: arch-prefixed keys such as "{arch}.block_count".
    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError("missing general.architecture")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)
