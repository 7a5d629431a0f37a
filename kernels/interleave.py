"""The legacy quantized types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) interleaved 8 rows at a time.

A decode mat-vec spends most of its time, on these types, in what every 32 values cost besides
the products: the block's scale turned into a float and broadcast, a convert and an FMA per block
and row, and on AVX2 a `vpmaddwd` per 32 products. Laid out row by row, a Q4_0 block took ~8.5
cycles on a Zen 1 core, Q5_0 ~12 (llama.cpp's own kernels about the same); llama.cpp repacks
Q4_0 at load for the same reason. Here each group of 8 rows is stored block by block, the 8 rows'
blocks side by side:

    chunk (rows 8g..8g+7, block b) = d[8] f16 | m[8] f16 (Q4_1, Q5_1) | qh 32 bytes (Q5_0, Q5_1)
                                     | qs: 4 vectors of 32 bytes (Q8_0: 8)

and vector j holds, at byte 4k + t, row k's byte 4j + t of the block's qs, so that one vector
is 8 rows x 4 consecutive values: one integer dot instruction against x's 4 values broadcast
gives the 8 rows' partial sums, lane k row k's (VNNI's vpdpbusd and ARM's sdot as they are; on
AVX2 vpmaddubsw pairs summed in int16, then one vpmaddwd per block for Q4 codes, two for Q5).
The block's 8 scales are one f16 vector, so the float work is one convert and FMA per block for 8
rows. Nibble vector j's low nibbles are values 4j..4j+3, its high ones 16+4j..16+4j+3 (as in a
block: qs[i] holds values i and i + 16). Q5's fifth bits: qh byte 4k + t, bit n, is row k's bit
of the value that nibble vector n holds at t (n < 4: low nibbles of vector n; n >= 4: high
nibbles of vector n - 4). A chunk is exactly 8 blocks' bytes; a weight takes as many bytes as in
the file, padded to ROWS_PAD rows (zeros).

The same chunks feed the prefill GEMM's panels (panel_<type>: its 8-row code vectors are these
vectors widened) and row lookups (dequantize_rows_x8: a tied embedding's lookups read the
repacked output matrix, not the file).

The products: each block's 8 integer dots are exact on every CPU, then, per block,

    acc += (d * xd) * dots        off += d * (-zero * xs32)   (Q4_1, Q5_1: m * xs32)

in float32 lanes, one per row, and a row's result is acc + off: the same float operations in
the same order on every path (AVX-512 VNNI, AVX2, ARM, generic), so the same bits. Q8_0's signed
codes w dot x exactly as w (AVX2: |w| against x carrying w's sign; ARM: sdot), or as w + 128 less
128 times the block's sum of x (VNNI, generic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .floats import read_f16
from .jit import njit
from .simd import (
    AVX2, DOTPROD, F32, I8, I16, I32, I64, PREFETCH_BYTES, ROWS_ARGS, VNNI, Emitter,
    _sum_pairs, declare, idot, idot_signed, outlined, vec,
)

ROWS = 8  # rows per group
ROWS_PAD = 16  # a repacked weight's rows are padded to this (the GEMM's 16-row panels read 2 groups)

# ggml type ids (ggml_types.py)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8


@dataclass(frozen=True)
class Layout:
    """Where a type's fields lie in a GGUF block (src_*) and in a chunk (the rest); -1: none."""
    name: str
    block_bytes: int  # one row's block in the file; a chunk is ROWS of them
    src_m: int
    src_qh: int
    src_qs: int
    vectors: int  # code vectors of 32 bytes per chunk: 4 of nibbles, 8 of Q8_0's bytes
    zero: int  # the code a value of 0 has (Q4_0: 8, Q5_0: 16, Q8_0: 0 for its signed bytes)

    @property
    def m_at(self) -> int:
        return 2 * ROWS if self.src_m >= 0 else -1

    @property
    def qh_at(self) -> int:
        return 2 * ROWS * (2 if self.src_m >= 0 else 1) if self.src_qh >= 0 else -1

    @property
    def qs_at(self) -> int:
        return 2 * ROWS * (2 if self.src_m >= 0 else 1) + (32 if self.src_qh >= 0 else 0)

    @property
    def chunk_bytes(self) -> int:
        return ROWS * self.block_bytes


LAYOUTS = {
    Q4_0: Layout("q4_0", 18, -1, -1, 2, 4, 8),
    Q4_1: Layout("q4_1", 20, 2, -1, 4, 4, 0),
    Q5_0: Layout("q5_0", 22, -1, 2, 6, 4, 16),
    Q5_1: Layout("q5_1", 24, 2, 4, 8, 4, 0),
    Q8_0: Layout("q8_0", 34, -1, -1, 2, 8, 0),
}
INTERLEAVED_TYPES = frozenset(LAYOUTS)
for _layout in LAYOUTS.values():
    assert _layout.qs_at + 32 * _layout.vectors == _layout.chunk_bytes, _layout


def layout_args(ggml_type: int) -> tuple[int, ...]:
    """A layout as the numba functions below take it: (block bytes, src_m, src_qh, src_qs,
    vectors, m_at, qh_at, qs_at, zero)."""
    lay = LAYOUTS[ggml_type]
    return (lay.block_bytes, lay.src_m, lay.src_qh, lay.src_qs, lay.vectors, lay.m_at, lay.qh_at, lay.qs_at, lay.zero)


# --- repacking and reading back (numba) ----------------------------------------------------------
def _word(width):
    """(load, store) intrinsics of a little-endian unsigned integer of width bits at a byte
    offset of a uint8 array, unaligned: load(a, i) -> uintN, store(a, i, v)."""
    t = ir.IntType(width)
    nb_type = getattr(types, f"uint{width}")

    def at(context, builder, arr_type, arr, i):
        data = cgutils.create_struct_proxy(arr_type)(context, builder, value=arr).data
        return builder.bitcast(builder.gep(data, [i]), t.as_pointer())

    @intrinsic
    def load(typingctx, a, i):
        def codegen(context, builder, sig, args):
            return builder.load(at(context, builder, sig.args[0], *args), align=1)

        return nb_type(a, types.intp), codegen

    @intrinsic
    def store(typingctx, a, i, v):
        def codegen(context, builder, sig, args):
            arr, index, value = args
            value = builder.trunc(value, t) if value.type.width > width else builder.zext(value, t) if value.type.width < width else value
            builder.store(value, at(context, builder, sig.args[0], arr, index), align=1)
            return context.get_dummy_value()

        return types.void(a, types.intp, v), codegen

    return load, store


load_u16, store_u16 = _word(16)
load_u32, store_u32 = _word(32)


@njit(cache=True, nogil=True)
def repack_rows(src, dst, r0, r1, lay):
    """Rows r0..r1 (r0 a multiple of ROWS) of src uint8 [rows, row_bytes] (GGUF blocks) into
    their groups of dst uint8 [>= rows, row_bytes] (zeros where rows are missing: a last partial
    group's padding must be zero already), chunk after chunk, 4 bytes at a time. lay:
    layout_args(type)."""
    block_bytes, src_m, src_qh, src_qs, vectors, m_at, qh_at, qs_at, _ = lay
    row_bytes = src.shape[1]
    n_blocks = row_bytes // block_bytes
    flat, whole = dst.reshape(-1), src.reshape(-1)
    chunk_bytes = ROWS * block_bytes
    for g in range(r0 // ROWS, -(-r1 // ROWS)):
        for b in range(n_blocks):
            c = (g * n_blocks + b) * chunk_bytes
            for k in range(min(ROWS, r1 - g * ROWS)):
                s = (g * ROWS + k) * row_bytes + b * block_bytes  # the row's block in src
                store_u16(flat, c + 2 * k, load_u16(whole, s))
                if src_m >= 0:
                    store_u16(flat, c + m_at + 2 * k, load_u16(whole, s + src_m))
                for j in range(vectors):
                    store_u32(flat, c + qs_at + 32 * j + 4 * k, load_u32(whole, s + src_qs + 4 * j))
                if src_qh >= 0:  # byte t, bit n: the bit of value 4n + t
                    qh = load_u32(whole, s + src_qh)
                    for t in range(4):
                        bits = (qh >> t) & 0x11111111
                        byte = 0
                        for n in range(8):
                            byte |= ((bits >> (4 * n)) & 1) << n
                        flat[c + qh_at + 4 * k + t] = byte


@njit(cache=True, nogil=True, fastmath=False)
def dequantize_row_x8(data, r, lay, out):
    """Row r of a repacked weight data uint8 [>= rows, row_bytes] -> out float32 [n_cols], bit
    for bit legacy.py's dequantizers of the row before repacking (d * (u - zero), or d * u + m:
    rounded to float32 before m is added)."""
    block_bytes, src_m, src_qh, src_qs, vectors, m_at, qh_at, qs_at, zero = lay
    n_blocks = data.shape[1] // block_bytes
    flat = data.reshape(-1)
    g, k = r // ROWS, r % ROWS
    for b in range(n_blocks):
        c = (g * n_blocks + b) * ROWS * block_bytes
        d = read_f16(flat[c + 2 * k : c + 2 * k + 2])
        m = read_f16(flat[c + m_at + 2 * k : c + m_at + 2 * k + 2]) if src_m >= 0 else np.float32(0)
        for j in range(vectors):
            for t in range(4):
                byte = flat[c + qs_at + 32 * j + 4 * k + t]
                if vectors == 8:  # Q8_0: signed bytes
                    out[32 * b + 4 * j + t] = d * np.float32(np.int8(byte))
                    continue
                lo, hi = np.int32(byte & 0xF), np.int32(byte >> 4)
                if src_qh >= 0:
                    bits = flat[c + qh_at + 4 * k + t]
                    lo |= np.int32((bits >> j) & 1) << 4
                    hi |= np.int32((bits >> (4 + j)) & 1) << 4
                if src_m >= 0:
                    out[32 * b + 4 * j + t] = d * np.float32(lo) + m
                    out[32 * b + 16 + 4 * j + t] = d * np.float32(hi) + m
                else:
                    out[32 * b + 4 * j + t] = d * np.float32(lo - zero)
                    out[32 * b + 16 + 4 * j + t] = d * np.float32(hi - zero)


# --- the chunk's codes as vectors (LLVM IR) -----------------------------------------------------
def _fifth_bits(e, qh, n):
    """<32 x i8>: 16 where bit n of each qh byte is set, else 0."""
    shifted = e.b.shl(qh, e.const(I8, 32, 4 - n)) if n <= 4 else e.b.lshr(qh, e.const(I8, 32, n - 4))
    return e.b.and_(shifted, e.const(I8, 32, 16))


def code_vectors(e, lay: Layout, chunk):
    """[(v0, <32 x i8>)]: the chunk's codes, 8 rows x 4 values each (byte 4k + t: row k's value
    v0 + t), unsigned (nibbles with their fifth bits: 0..31) or, for Q8_0, the signed bytes."""
    b = e.b

    def vector(offset):
        return b.load(b.bitcast(e.gep(chunk, offset), vec(I8, 32).as_pointer()), align=1)

    qs = [vector(lay.qs_at + 32 * j) for j in range(lay.vectors)]
    if lay.vectors == 8:
        return [(4 * j, w) for j, w in enumerate(qs)]
    qh = vector(lay.qh_at) if lay.qh_at >= 0 else None
    out = []
    for j, v in enumerate(qs):
        lo, hi = b.and_(v, e.const(I8, 32, 15)), b.lshr(v, e.const(I8, 32, 4))
        if qh is not None:
            lo, hi = b.or_(lo, _fifth_bits(e, qh, j)), b.or_(hi, _fifth_bits(e, qh, 4 + j))
        out += [(4 * j, lo), (16 + 4 * j, hi)]
    return out


def _halves_at(e, chunk, offset):
    """<8 x float>: the 8 f16 at chunk + offset, widened (vcvtph2ps, fcvtl)."""
    p = e.b.bitcast(e.gep(chunk, offset), vec(ir.HalfType(), ROWS).as_pointer())
    return e.b.fpext(e.b.load(p, align=2), vec(F32, ROWS))


def fields(e, lay: Layout, chunk):
    """(scales, offsets) <8 x float>: the rows' d, and what multiplies the block's sum of x
    (d * -zero; m for Q4_1, Q5_1; None for Q8_0): the panels' fields, as simd.Sub has them."""
    d = _halves_at(e, chunk, 0)
    if lay.m_at >= 0:
        return d, _halves_at(e, chunk, lay.m_at)
    if lay.zero:
        return d, e.fmul(d, e.const(F32, ROWS, float(-lay.zero)))
    return d, None


# --- decode: 8 rows . x at a time --------------------------------------------------------------
def _x4(e, xq, v):
    """x's codes v..v+3 (an i32) broadcast to 8 lanes, as <32 x i8>."""
    word = e.b.load(e.b.bitcast(e.gep(xq, v), I32.as_pointer()), align=1)
    return e.b.bitcast(e.splat(word, ROWS), vec(I8, 32))


def _nibble_dots(e, codes, xq, base, max_code):
    """<8 x i32>: sum over codes (v0, u) of u . x[base + v0 ..] per lane, exact. On AVX2 the
    vpmaddubsw pairs are summed in int16 as far as they cannot overflow (2 * max_code * 127 per
    pair), then widened by one vpmaddwd per run."""
    b = e.b
    if AVX2 and not VNNI:
        v32, v16 = vec(I8, 32), vec(I16, 16)
        maddubs = declare(b.module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v32, v32])
        run = 32767 // (2 * max_code * 127)
        lanes = None
        for i in range(0, len(codes), run):
            pairs = None
            for v0, u in codes[i : i + run]:
                p = b.call(maddubs, [u, _x4(e, xq, b.add(base, ir.Constant(I64, v0)))])
                pairs = p if pairs is None else b.add(pairs, p)
            part = _sum_pairs(e, pairs)
            lanes = part if lanes is None else b.add(lanes, part)
        return lanes
    lanes = e.const(I32, ROWS, 0)
    for v0, u in codes:
        lanes = idot(e, u, _x4(e, xq, b.add(base, ir.Constant(I64, v0))), lanes)
    return lanes


Q8_0_SIGNED = AVX2 and not VNNI or DOTPROD  # Q8_0's w . x as it is (else as (w + 128) . x - 128 sum x)


def _q8_0_dots(e, codes, xq, base, sum128):
    """<8 x i32>: Q8_0's signed codes . x per lane, exact (sum128: 128 times the block's sum of
    x codes, an i32, where Q8_0_SIGNED is off)."""
    b = e.b
    lanes = e.const(I32, ROWS, 0)
    for v0, w in codes:
        x = _x4(e, xq, b.add(base, ir.Constant(I64, v0)))
        if Q8_0_SIGNED:
            lanes = idot_signed(e, w, x, lanes)
        else:
            lanes = idot(e, b.xor(w, e.const(I8, 32, -128)), x, lanes)
    return lanes if Q8_0_SIGNED else b.sub(lanes, e.splat(sum128, ROWS))


def _sums128(e, xq, n_blocks):
    """i32 [n_blocks] on the stack: 128 times each 32 x codes' sum (_q8_0_dots)."""
    b = e.b
    out = b.alloca(I32, size=n_blocks)
    with cgutils.for_range(b, n_blocks) as loop:
        q = b.load(b.bitcast(e.gep(xq, e.mul(loop.index, 32)), vec(I8, 32).as_pointer()), align=1)
        lanes = b.mul(b.sext(q, vec(I32, 32)), e.const(I32, 32, 128))
        total = lanes
        while total.type.count > 1:
            lo, hi = e.halves(total)
            total = b.add(lo, hi)
        b.store(b.extract_element(total, ir.Constant(I32, 0)), e.gep(out, loop.index))
    return out


def _group_dot(e, lay, group, xq, xd, xs32, n_blocks, sums128):
    """<8 x float>: the group's 8 rows . one x row (its codes, scales and sums at xq, xd, xs32)."""
    b = e.b
    acc = cgutils.alloca_once_value(b, e.const(F32, ROWS, 0.0))
    off = cgutils.alloca_once_value(b, e.const(F32, ROWS, 0.0))
    with cgutils.for_range(b, n_blocks) as loop:
        blk = loop.index
        chunk = e.gep(group, e.mul(blk, lay.chunk_bytes))
        for line in range(0, lay.chunk_bytes, 64):
            e.prefetch_at(e.gep(chunk, PREFETCH_BYTES + line))
        codes = code_vectors(e, lay, chunk)
        base = e.mul(blk, 32)
        if lay.vectors == 8:
            dots = _q8_0_dots(e, codes, xq, base, None if sums128 is None else e.scalar(sums128, blk))
        else:
            dots = _nibble_dots(e, codes, xq, base, 31 if lay.qh_at >= 0 else 15)
        d = _halves_at(e, chunk, 0)
        b.store(e.fma(e.fmul(d, e.splat(e.scalar(xd, blk), ROWS)), e.to_float(dots), b.load(acc)), acc)
        if lay.m_at >= 0:
            b.store(e.fma(_halves_at(e, chunk, lay.m_at), e.splat(e.scalar(xs32, blk), ROWS), b.load(off)), off)
        elif lay.zero:
            sums = e.fmul(e.scalar(xs32, blk), ir.Constant(F32, float(-lay.zero)))  # exact: a power of two
            b.store(e.fma(d, e.splat(sums, ROWS), b.load(off)), off)
    return e.fadd(b.load(acc), b.load(off))


def _rows_x8(lay: Layout):
    """rows_x8_<type>(data, x, xq, xd, xs32, xs16, f16, out, start, stop): out[k, r] = row r .
    x[k] for rows start..stop (start a multiple of ROWS) of a repacked weight data uint8 [rows,
    row_bytes] (its groups read whole: the padding rows are there), every x row k; the other
    arguments as simd.rows_<type>'s."""

    def generic(typingctx, data, x, xq, xd, xs32, xs16, f16, out, start, stop):
        sig = types.void(data, x, xq, xd, xs32, xs16, f16, out, start, stop)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, ROWS_ARGS)
            b = builder
            rows, row_bytes = e.shape(0, 0), e.shape(0, 1)
            n, n_cols = e.shape(1, 0), e.shape(1, 1)
            n_blocks = b.udiv(n_cols, ir.Constant(I64, 32))
            sums128 = None
            if lay.vectors == 8 and not Q8_0_SIGNED:
                sums128 = _sums128(e, e.xq, b.mul(n, n_blocks))
            g0 = b.udiv(e.start, ir.Constant(I64, ROWS))
            g1 = b.udiv(b.add(e.stop, ir.Constant(I64, ROWS - 1)), ir.Constant(I64, ROWS))
            with cgutils.for_range_slice(b, g0, g1, ir.Constant(I64, 1)) as (g, _):
                group = e.gep(e.data, b.mul(g, e.mul(row_bytes, ROWS)))
                r0 = e.mul(g, ROWS)
                valid = b.sub(rows, r0)
                with cgutils.for_range(b, n) as loop:
                    k = loop.index
                    xq = e.gep(e.xq, b.mul(k, n_cols))
                    xd, xs32 = e.gep(e.xd, b.mul(k, n_blocks)), e.gep(e.xs32, b.mul(k, n_blocks))
                    s128 = None if sums128 is None else e.gep(sums128, b.mul(k, n_blocks))
                    result = _group_dot(e, lay, group, xq, xd, xs32, n_blocks, s128)
                    e.store_first(result, e.gep(e.out, b.add(b.mul(k, rows), r0)), valid)
            return context.get_dummy_value()

        return sig, outlined(f"rows_x8_{lay.name}", codegen)

    return intrinsic(generic)


rows_x8_q4_0, rows_x8_q4_1, rows_x8_q5_0, rows_x8_q5_1, rows_x8_q8_0 = (
    _rows_x8(LAYOUTS[t]) for t in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0))
