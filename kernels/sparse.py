"""2:4 sparse weights in edgellm's compact layout (docs/sparse-format.md): y = x @ W.T reading
only the kept values, their positions and the block scales.

A row of n_cols weights (a multiple of 64) is three planes. Block b covers columns 32b..32b+31:
8 groups of 4 columns, 2 kept values each, numbered k = 0..15 (group k // 2; first or second
kept position of the group as k is even or odd).

    values  Q4: uint8 [n_cols / 4]: 16 bytes per pair of blocks (2c, 2c + 1): byte j holds kept
                value j of block 2c in its low nibble, of block 2c + 1 in its high nibble
                (W = d * (v - 8), as Q4_0)
            Q8: int8 [n_cols / 2]: 16 bytes per block, kept value k in byte k (W = d * v)
    index   uint8 [n_cols / 8]: 4 bytes per block, the little-endian uint32 whose bits 2k..2k+1
            are kept value k's position (0..3) within its group
    scales  uint16 [n_cols / 32]: f16 bits of block b's scale d

These are the values and scales of the Q4_0 / Q8_0 twin with the zeros in place, so both give the
same products up to float rounding.

    matvec_q4 / matvec_q8   out[k, r] = W[r] . x[k] for a few x rows (decode), one pass over each
                            row's planes
    dequantize_q4 / _q8     rows [start, start + len(out)) as float32 with the zeros in place, for
                            prefill tiles that BLAS multiplies

The row dot comes in two versions. On CPUs with AVX-512 it is explicit vector code (numba
@intrinsic + llvmlite, like simd.py): per block, the 16 positions become 16 column indices with
one shift and one mask, and `vpermi2ps` picks the 16 matching x values out of the block's 32 in
two registers, so the kept values meet their x with no gather and no scalar work. Elsewhere a
plain numba loop does the same with indexed loads.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .floats import half_to_float

FAST = {"reassoc", "nsz", "contract"}
CHUNK_ROWS = 32  # rows per parallel work item
HAS_AVX512 = llvm.get_host_cpu_features().get("avx512f", False)

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
LLVM_FAST = ("fast",)


# --- the explicit-vector row dot (AVX-512) ---------------------------------------------------------

def _vec(t, n):
    return ir.VectorType(t, n)


def _const(t, n, values):
    return ir.Constant(_vec(t, n), values if isinstance(values, list) else [values] * n)


class _Row:
    """IR helpers over one row: the three planes, x, and the running 16-lane accumulators."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        arrays = [cgutils.create_struct_proxy(t)(context, builder, value=v) for t, v in zip(sig.args, args)]
        self.values, self.index, self.scales, self.x = (a.data for a in arrays)
        self.n_cols = builder.extract_value(arrays[3].shape, 0)
        permute_type = ir.FunctionType(_vec(F32, 16), [_vec(F32, 16), _vec(I32, 16), _vec(F32, 16)])
        self.permute = cgutils.get_or_insert_function(builder.module, permute_type,
                                                      "llvm.x86.avx512.vpermi2var.ps.512")

    def load(self, ptr, offset, t):
        """A value of type t at byte/element offset of ptr (unaligned)."""
        p = self.b.bitcast(self.b.gep(ptr, [offset]), t.as_pointer())
        return self.b.load(p, align=1)

    def block(self, blk, kept, acc):
        """acc + d * kept * x[kept columns] for block blk: kept <16 x float> (kept values, d-less)."""
        b = self.b
        bits = self.load(b.bitcast(self.index, I8.as_pointer()), b.mul(blk, ir.Constant(I64, 4)), I32)
        splat = b.shuffle_vector(b.insert_element(ir.Constant(_vec(I32, 16), None), bits, ir.Constant(I32, 0)),
                                 ir.Constant(_vec(I32, 16), None), _const(I32, 16, 0))
        pos = b.and_(b.lshr(splat, _const(I32, 16, [2 * k for k in range(16)])), _const(I32, 16, 3))
        cols = b.or_(pos, _const(I32, 16, [4 * (k // 2) for k in range(16)]))  # 0..31 in the block
        x0 = b.mul(blk, ir.Constant(I64, 32))
        lo = self.load(self.x, x0, _vec(F32, 16))
        hi = self.load(self.x, b.add(x0, ir.Constant(I64, 16)), _vec(F32, 16))
        xs = b.call(self.permute, [lo, cols, hi])
        d = b.fpext(b.bitcast(self.load(self.scales, blk, I16), ir.HalfType()), F32)
        dv = b.shuffle_vector(b.insert_element(ir.Constant(_vec(F32, 16), None), d, ir.Constant(I32, 0)),
                              ir.Constant(_vec(F32, 16), None), _const(I32, 16, 0))
        return b.fadd(acc, b.fmul(dv, b.fmul(kept, xs, flags=LLVM_FAST), flags=LLVM_FAST), flags=LLVM_FAST)

    def reduce(self, v):
        b = self.b
        n = v.type.count
        while n > 1:
            n //= 2
            lo = b.shuffle_vector(v, v, _const(I32, n, list(range(n))))
            hi = b.shuffle_vector(v, v, _const(I32, n, list(range(n, 2 * n))))
            v = b.fadd(lo, hi, flags=LLVM_FAST)
        return b.extract_element(v, ir.Constant(I32, 0))


def _row_dot(emit_pair):
    """An intrinsic dot(values, index, scales, x) -> float32 over a row's pairs of blocks."""

    def generic(typingctx, values, index, scales, x):
        sig = types.float32(values, index, scales, x)

        def codegen(context, builder, signature, args):
            row = _Row(context, builder, signature, args)
            zero = _const(F32, 16, 0.0)
            acc0 = cgutils.alloca_once_value(builder, zero)
            acc1 = cgutils.alloca_once_value(builder, zero)
            n_pairs = builder.udiv(row.n_cols, ir.Constant(I64, 64))
            with cgutils.for_range(builder, n_pairs) as loop:
                a0, a1 = emit_pair(row, loop.index, builder.load(acc0), builder.load(acc1))
                builder.store(a0, acc0)
                builder.store(a1, acc1)
            total = builder.fadd(builder.load(acc0), builder.load(acc1), flags=LLVM_FAST)
            return row.reduce(total)

        return sig, codegen

    return intrinsic(generic)


def _pair_q4(row, c, acc0, acc1):
    b = row.b
    raw = b.zext(row.load(row.values, b.mul(c, ir.Constant(I64, 16)), _vec(I8, 16)), _vec(I32, 16))
    eight = _const(I32, 16, 8)
    lo = b.sitofp(b.sub(b.and_(raw, _const(I32, 16, 15)), eight), _vec(F32, 16))
    hi = b.sitofp(b.sub(b.lshr(raw, _const(I32, 16, 4)), eight), _vec(F32, 16))
    blk = b.mul(c, ir.Constant(I64, 2))
    return row.block(blk, lo, acc0), row.block(b.add(blk, ir.Constant(I64, 1)), hi, acc1)


def _pair_q8(row, c, acc0, acc1):
    b = row.b
    out = []
    for i, acc in enumerate((acc0, acc1)):
        blk = b.add(b.mul(c, ir.Constant(I64, 2)), ir.Constant(I64, i))
        q = row.load(row.values, b.mul(blk, ir.Constant(I64, 16)), _vec(I8, 16))
        out.append(row.block(blk, b.sitofp(b.sext(q, _vec(I32, 16)), _vec(F32, 16)), acc))
    return out


_simd_dot_q4 = _row_dot(_pair_q4)
_simd_dot_q8 = _row_dot(_pair_q8)


# --- the portable row dot -------------------------------------------------------------------------

@njit(cache=True, fastmath=FAST, inline="always")
def _value(values, blk, k, q8):
    """Kept value k of block blk, d-less: Q8 values are int8, Q4 nibbles (uint8 pairs of blocks)."""
    if q8:
        return np.float32(values[16 * blk + k])
    return np.float32(np.int32((np.int32(values[16 * (blk // 2) + k]) >> (4 * (blk % 2))) & 15) - 8)


@njit(cache=True, fastmath=FAST, inline="always")
def _column(index, blk, k):
    """Column (in the row) of kept value k of block blk."""
    return 32 * blk + 4 * (k // 2) + ((np.int32(index[4 * blk + k // 4]) >> (2 * (k % 4))) & 3)


@njit(cache=True, fastmath=FAST, inline="always")
def _loop_dot(values, index, scales, x, q8):
    acc = np.float32(0.0)
    for blk in range(scales.shape[0]):
        s = np.float32(0.0)
        for k in range(16):
            s += _value(values, blk, k, q8) * x[_column(index, blk, k)]
        acc += half_to_float(np.int32(scales[blk])) * s
    return acc


# --- the kernels ------------------------------------------------------------------------------------

@njit(cache=True, parallel=True, fastmath=FAST)
def matvec_simd(values, index, scales, x, out, q8):
    """values [rows, n_cols/4] uint8 (Q4) or [rows, n_cols/2] int8 (Q8), index uint8
    [rows, n_cols/8], scales uint16 [rows, n_cols/32], x float32 [n, n_cols] -> out float32
    [n, rows]. AVX-512 only (see the module docstring)."""
    rows = values.shape[0]
    for c in prange((rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
        for r in range(c * CHUNK_ROWS, min(rows, (c + 1) * CHUNK_ROWS)):
            for k in range(x.shape[0]):
                if q8:
                    out[k, r] = _simd_dot_q8(values[r], index[r], scales[r], x[k])
                else:
                    out[k, r] = _simd_dot_q4(values[r], index[r], scales[r], x[k])


@njit(cache=True, parallel=True, fastmath=FAST)
def matvec_loop(values, index, scales, x, out, q8):
    """As matvec_simd, on any CPU."""
    rows = values.shape[0]
    for c in prange((rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
        for r in range(c * CHUNK_ROWS, min(rows, (c + 1) * CHUNK_ROWS)):
            for k in range(x.shape[0]):
                out[k, r] = _loop_dot(values[r], index[r], scales[r], x[k], q8)


@njit(cache=True, parallel=True, fastmath=False)
def dequantize(values, index, scales, start, out, q8):
    """Rows [start, start + len(out)) -> out float32 [m, n_cols], the same values as the twin."""
    for i in prange(out.shape[0]):
        r = start + i
        row = out[i]
        row[:] = 0.0
        for blk in range(scales.shape[1]):
            d = half_to_float(np.int32(scales[r, blk]))
            for k in range(16):
                row[_column(index[r], blk, k)] = d * _value(values[r], blk, k, q8)


def matvec(values, index, scales, x, out, q8: bool) -> None:
    """out = x @ W.T with the fastest row dot this CPU runs (the explicit one needs AVX-512)."""
    (matvec_simd if HAS_AVX512 else matvec_loop)(values, index, scales, x, out, q8)
