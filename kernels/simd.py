"""Row dot products written as explicit LLVM vector code: one quantized row . x in one pass.

Numba hands loops to LLVM's vectorizers, which do well on long loops and badly on the 16- and
32-value loops inside quantized blocks: it either unrolls them into scalar code or vectorizes the
loop over blocks with gathers, 4-10x slower. So the hot loop is emitted here directly through
numba's @intrinsic with llvmlite: per block, load the packed integers as one vector, widen them
to float32 lanes, multiply by the matching x values and add into a vector accumulator that lives
in registers across the whole row; reduce it to one float once per row. LLVM lowers the generic
vectors to whatever the CPU has (AVX-512, AVX2, NEON).

Per type, a block contributes

    sum_j d * (q_j - z) * x_j  =  d * sum_j q_j x_j  -  d * z * sum_j x_j

so offsets and minimums never touch the lanes: they multiply the sum of x over the block
(`xs32`/`xs16`, computed once per x row) and go into a scalar accumulator.

Each intrinsic is `dot_<type>(row, x, xs32, xs16, f16)`: row uint8 [row_bytes] (the row's
blocks), x float32 [n_cols], xs32/xs16 float32 [n_cols / 32 or / 16], f16 the float32 [65536]
table of every f16 bit pattern (one load per scale, no conversion code).

Numba's disk cache notices edits to the file of a cached function (matvec.py), not to this one:
after changing an emitter here, delete ~/.cache/edgellm/numba (an install or upgrade rewrites
every file, so users never meet a stale kernel).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
FAST = ("fast",)  # lane arithmetic may be reassociated and contracted (dots, not exact values)


def vec(t, n):
    return ir.VectorType(t, n)


class Emitter:
    """IR helpers over one call's arrays: loads at byte/element offsets, splats, lane math."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        arrays = [cgutils.create_struct_proxy(t)(context, builder, value=v) for t, v in zip(sig.args, args)]
        self.row, self.x, self.xs32, self.xs16, self.f16 = (a.data for a in arrays)
        self.n_cols = builder.extract_value(arrays[1].shape, 0)  # x's length, i64

    def gep(self, ptr, offset):
        return self.b.gep(ptr, [offset if isinstance(offset, ir.Value) else ir.Constant(I64, offset)])

    def bytes_at(self, base, offset, n):
        """<n x i8> at row + base + offset (unaligned)."""
        p = self.b.bitcast(self.gep(self.gep(self.row, base), offset), vec(I8, n).as_pointer())
        return self.b.load(p, align=1)

    def prefetch(self, base, offset):
        """Ask for the cache line at row + base + offset ahead of its use (read, keep in cache)."""
        module = self.b.module
        fn = module.globals.get("llvm.prefetch.p0")
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.PointerType(I8), I32, I32, I32]), "llvm.prefetch.p0")
        p = self.b.bitcast(self.gep(self.gep(self.row, base), offset), ir.PointerType(I8))
        self.b.call(fn, [p, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

    def uint_at(self, base, offset, t):
        """A little-endian integer of type t at row + base + offset, zero-extended to i32."""
        p = self.b.bitcast(self.gep(self.gep(self.row, base), offset), t.as_pointer())
        v = self.b.load(p, align=1)
        return self.b.zext(v, I32) if t.width < 32 else v

    def half_at(self, base, offset):
        """The f16 at row + base + offset as float32 (a table lookup)."""
        bits = self.uint_at(base, offset, I16)
        return self.b.load(self.gep(self.f16, self.b.zext(bits, I64)))

    def floats(self, ptr, index, n):
        """<n x float> at ptr[index:index + n]."""
        p = self.b.bitcast(self.gep(ptr, index), vec(F32, n).as_pointer())
        return self.b.load(p, align=4)

    def scalar(self, ptr, index):
        return self.b.load(self.gep(ptr, index))

    def add(self, i, k):
        return self.b.add(i, ir.Constant(I64, k))

    def mul(self, i, k):
        return self.b.mul(i, ir.Constant(I64, k))

    def splat(self, value, n):
        v = self.b.insert_element(ir.Constant(vec(value.type, n), None), value, ir.Constant(I32, 0))
        return self.b.shuffle_vector(v, v, ir.Constant(vec(I32, n), [0] * n))

    @staticmethod
    def const(t, n, value):
        return ir.Constant(vec(t, n), value if isinstance(value, list) else [value] * n)

    def to_float(self, ints):
        return self.b.sitofp(ints, vec(F32, ints.type.count))

    def fmul(self, a, b):
        return self.b.fmul(a, b, flags=FAST)

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=FAST)

    def fma(self, a, b, acc):
        """acc + a * b, contracted into an FMA where the CPU has one."""
        return self.fadd(acc, self.fmul(a, b))

    def halves(self, v):
        n = v.type.count // 2
        lo = self.b.shuffle_vector(v, v, self.const(I32, n, list(range(n))))
        hi = self.b.shuffle_vector(v, v, self.const(I32, n, list(range(n, 2 * n))))
        return lo, hi

    def reduce(self, v):
        """Sum of the lanes: halve the vector until one lane is left."""
        while v.type.count > 1:
            lo, hi = self.halves(v)
            v = self.fadd(lo, hi)
        return self.b.extract_element(v, ir.Constant(I32, 0))

    def nibbles(self, q):
        """<n x i8> -> (low nibbles, high nibbles) as <n x i32>."""
        w = self.b.zext(q, vec(I32, q.type.count))
        return self.b.and_(w, self.const(I32, q.type.count, 15)), self.b.lshr(w, self.const(I32, q.type.count, 4))


LANES = 32  # the vector accumulator: 32 float32 lanes (2 AVX-512 / 4 AVX2 / 8 NEON registers)
# Each block asks for the bytes this far ahead of it (llvm.prefetch): with the hardware
# prefetcher alone a 178 MB Q8_0 mat-vec read 5.1-5.4 GB/s, with this 7.9-8.5 (Q5_0: 4.0 -> 4.9).
PREFETCH_BYTES = 4096


def _row_dot(block_values, block_bytes, emit_block):
    """An intrinsic summing emit_block(e, b, acc, off) over the row's blocks (block_values values
    in block_bytes bytes); emit_block returns the updated (vector acc, scalar off); the result is
    their sum."""

    def generic(typingctx, row, x, xs32, xs16, f16):
        sig = types.float32(row, x, xs32, xs16, f16)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            n_blocks = builder.udiv(e.n_cols, ir.Constant(I64, block_values))
            acc = cgutils.alloca_once_value(builder, e.const(F32, LANES, 0.0))
            off = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
            with cgutils.for_range(builder, n_blocks) as loop:
                base = e.mul(loop.index, block_bytes)
                for line in range(0, block_bytes, 64):
                    e.prefetch(base, PREFETCH_BYTES + line)
                a, o = emit_block(e, loop.index, builder.load(acc), builder.load(off))
                builder.store(a, acc)
                builder.store(o, off)
            return e.fadd(e.reduce(builder.load(acc)), builder.load(off))

        return sig, codegen

    return intrinsic(generic)


# --- float rows, taken 32 values at a time ------------------------------------------------------
def _f32(e, b, acc, off):
    return e.fma(e.floats(e.b.bitcast(e.row, F32.as_pointer()), e.mul(b, 32), 32),
                 e.floats(e.x, e.mul(b, 32), 32), acc), off


def _f16(e, b, acc, off):  # 32 values of f16: widened by the CPU's converter (F16C, NEON)
    p = e.b.bitcast(e.gep(e.row, e.mul(b, 64)), vec(ir.HalfType(), 32).as_pointer())
    w = e.b.fpext(e.b.load(p, align=1), vec(F32, 32))
    return e.fma(w, e.floats(e.x, e.mul(b, 32), 32), acc), off


def _bf16(e, b, acc, off):  # 32 values of bf16: the top halves of float32s
    p = e.b.bitcast(e.gep(e.row, e.mul(b, 64)), vec(I16, 32).as_pointer())
    bits = e.b.shl(e.b.zext(e.b.load(p, align=1), vec(I32, 32)), e.const(I32, 32, 16))
    w = e.b.bitcast(bits, vec(F32, 32))
    return e.fma(w, e.floats(e.x, e.mul(b, 32), 32), acc), off


# --- the legacy blocks of 32 ---------------------------------------------------------------------

def _q8_0(e, b, acc, off):  # 34 bytes: d f16 | q i8[32]
    base = e.mul(b, 34)
    q = e.to_float(e.b.sext(e.bytes_at(base, 2, 32), vec(I32, 32)))
    prod = e.fmul(q, e.floats(e.x, e.mul(b, 32), 32))
    return e.fma(e.splat(e.half_at(base, 0), LANES), prod, acc), off


def _nibble_block(e, b, q, qh=None):
    """d-less sum lanes of a 32-value block from 16 nibble bytes (+ a 5th bit from qh):
    value j in the low nibble of byte j, value j + 16 in the high nibble."""
    lo, hi = e.nibbles(q)
    if qh is not None:  # bit j of qh is bit 4 of value j
        bits = e.splat(qh, 16)
        lo = e.b.or_(lo, e.b.shl(e.b.and_(e.b.lshr(bits, e.const(I32, 16, list(range(16)))), e.const(I32, 16, 1)), e.const(I32, 16, 4)))
        hi = e.b.or_(hi, e.b.shl(e.b.and_(e.b.lshr(bits, e.const(I32, 16, list(range(16, 32)))), e.const(I32, 16, 1)), e.const(I32, 16, 4)))
    joined = e.b.shuffle_vector(e.to_float(lo), e.to_float(hi), e.const(I32, 32, list(range(32))))
    return e.fmul(joined, e.floats(e.x, e.mul(b, 32), 32))


def _q4_0(e, b, acc, off):  # 18 bytes: d f16 | qs u8[16]; x = d * (q - 8)
    base = e.mul(b, 18)
    d = e.half_at(base, 0)
    prod = _nibble_block(e, b, e.bytes_at(base, 2, 16))
    off = e.fadd(off, e.fmul(e.fmul(d, ir.Constant(F32, -8.0)), e.scalar(e.xs32, b)))
    return e.fma(e.splat(d, LANES), prod, acc), off


def _q4_1(e, b, acc, off):  # 20 bytes: d f16 | m f16 | qs u8[16]; x = d * q + m
    base = e.mul(b, 20)
    prod = _nibble_block(e, b, e.bytes_at(base, 4, 16))
    off = e.fadd(off, e.fmul(e.half_at(base, 2), e.scalar(e.xs32, b)))
    return e.fma(e.splat(e.half_at(base, 0), LANES), prod, acc), off


def _q5_0(e, b, acc, off):  # 22 bytes: d f16 | qh u32 | qs u8[16]; x = d * (q - 16)
    base = e.mul(b, 22)
    d = e.half_at(base, 0)
    prod = _nibble_block(e, b, e.bytes_at(base, 6, 16), e.uint_at(base, 2, I32))
    off = e.fadd(off, e.fmul(e.fmul(d, ir.Constant(F32, -16.0)), e.scalar(e.xs32, b)))
    return e.fma(e.splat(d, LANES), prod, acc), off


def _q5_1(e, b, acc, off):  # 24 bytes: d f16 | m f16 | qh u32 | qs u8[16]; x = d * q + m
    base = e.mul(b, 24)
    prod = _nibble_block(e, b, e.bytes_at(base, 8, 16), e.uint_at(base, 4, I32))
    off = e.fadd(off, e.fmul(e.half_at(base, 2), e.scalar(e.xs32, b)))
    return e.fma(e.splat(e.half_at(base, 0), LANES), prod, acc), off


# --- k-quants: super-blocks of 256 ---------------------------------------------------------------

def _scale_min_k4(e, base, s):
    """(scale, min) of sub-block s as float32 from the 12 packed bytes at row + base + 4."""
    def byte(i):
        return e.uint_at(base, 4 + i, I8)

    c63, c15 = ir.Constant(I32, 63), ir.Constant(I32, 15)
    six, four = ir.Constant(I32, 6), ir.Constant(I32, 4)
    if s < 4:
        sc, m = e.b.and_(byte(s), c63), e.b.and_(byte(s + 4), c63)
    else:
        sc = e.b.or_(e.b.and_(byte(s + 4), c15), e.b.shl(e.b.lshr(byte(s - 4), six), four))
        m = e.b.or_(e.b.lshr(byte(s + 4), four), e.b.shl(e.b.lshr(byte(s), six), four))
    return e.b.sitofp(sc, F32), e.b.sitofp(m, F32)


def _k4_block(e, b, acc, off, block_bytes, qs_at, qh_at=None):
    """Q4_K and Q5_K: x = d * sc_s * q - dmin * m_s over 8 sub-blocks of 32; sub-blocks 2i and
    2i + 1 are the low and high nibbles of the 32 bytes qs[32i : 32i + 32] (Q5_K: bit 4 of value
    l of sub-block s in bit s of qh[l])."""
    base = e.mul(b, block_bytes)
    d, dmin = e.half_at(base, 0), e.half_at(base, 2)
    qh = e.b.zext(e.bytes_at(base, qh_at, 32), vec(I32, 32)) if qh_at is not None else None
    mins = ir.Constant(F32, 0.0)
    for i in range(4):
        lo, hi = e.nibbles(e.bytes_at(base, qs_at + 32 * i, 32))
        if qh is not None:
            one = e.const(I32, 32, 1)
            lo = e.b.or_(lo, e.b.shl(e.b.and_(e.b.lshr(qh, e.const(I32, 32, 2 * i)), one), e.const(I32, 32, 4)))
            hi = e.b.or_(hi, e.b.shl(e.b.and_(e.b.lshr(qh, e.const(I32, 32, 2 * i + 1)), one), e.const(I32, 32, 4)))
        x0 = e.floats(e.x, e.add(e.mul(b, 256), 64 * i), 32)
        x1 = e.floats(e.x, e.add(e.mul(b, 256), 64 * i + 32), 32)
        sc0, m0 = _scale_min_k4(e, base, 2 * i)
        sc1, m1 = _scale_min_k4(e, base, 2 * i + 1)
        acc = e.fma(e.splat(e.fmul(d, sc0), LANES), e.fmul(e.to_float(lo), x0), acc)
        acc = e.fma(e.splat(e.fmul(d, sc1), LANES), e.fmul(e.to_float(hi), x1), acc)
        sub = e.add(e.mul(b, 8), 2 * i)
        mins = e.fadd(mins, e.fadd(e.fmul(m0, e.scalar(e.xs32, sub)), e.fmul(m1, e.scalar(e.xs32, e.add(sub, 1)))))
    return acc, e.fadd(off, e.fmul(e.b.fneg(dmin), mins))


def _q4_k(e, b, acc, off):  # 144 bytes: d | dmin | scales u8[12] | qs u8[128]
    return _k4_block(e, b, acc, off, 144, qs_at=16)


def _q5_k(e, b, acc, off):  # 176 bytes: d | dmin | scales u8[12] | qh u8[32] | qs u8[128]
    return _k4_block(e, b, acc, off, 176, qs_at=48, qh_at=16)


def _q6_k(e, b, acc, off):
    """210 bytes: ql u8[128] | qh u8[64] | scales i8[16] | d f16; x = d * sc * (q6 - 32) over 16
    sub-blocks of 16. In half h, value l + 32g (l < 32) takes nibble g // 2 of ql[64h + 32(g % 2)
    + l] and bits 2g..2g+1 of qh[32h + l]; its scale is scales[8h + l // 16 + 2g]."""
    base = e.mul(b, 210)
    d = e.half_at(base, 208)
    three = e.const(I32, 32, 3)
    # scales as floats, and the offsets: -32 * sum over sub-blocks of scale * sum of x
    sc = e.to_float(e.b.sext(e.bytes_at(base, 192, 16), vec(I32, 16)))
    zs = e.fmul(sc, e.floats(e.xs16, e.mul(b, 16), 16))
    off = e.fadd(off, e.fmul(e.fmul(d, ir.Constant(F32, -32.0)), e.reduce(zs)))
    sc_lanes = []
    for s in range(16):
        sc_lanes.append(e.b.extract_element(sc, ir.Constant(I32, s)))
    block = e.const(F32, LANES, 0.0)
    for h in range(2):
        qh = e.b.zext(e.bytes_at(base, 128 + 32 * h, 32), vec(I32, 32))
        ql0, ql1 = e.nibbles(e.bytes_at(base, 64 * h, 32)), e.nibbles(e.bytes_at(base, 64 * h + 32, 32))
        for g, low4 in enumerate((ql0[0], ql1[0], ql0[1], ql1[1])):
            high2 = e.b.and_(e.b.lshr(qh, e.const(I32, 32, 2 * g)), three)
            q = e.to_float(e.b.or_(low4, e.b.shl(high2, e.const(I32, 32, 4))))
            x = e.floats(e.x, e.add(e.mul(b, 256), 128 * h + 32 * g), 32)
            s = 8 * h + 2 * g  # lanes 0-15 use scale s, lanes 16-31 scale s + 1
            lo, hi = e.splat(sc_lanes[s], 16), e.splat(sc_lanes[s + 1], 16)
            scale = e.b.shuffle_vector(lo, hi, e.const(I32, 32, list(range(32))))
            block = e.fma(scale, e.fmul(q, x), block)
    return e.fma(e.splat(d, LANES), block, acc), off


dot_f32 = _row_dot(32, 128, _f32)
dot_f16 = _row_dot(32, 64, _f16)
dot_bf16 = _row_dot(32, 64, _bf16)
dot_q8_0 = _row_dot(32, 34, _q8_0)
dot_q4_0 = _row_dot(32, 18, _q4_0)
dot_q4_1 = _row_dot(32, 20, _q4_1)
dot_q5_0 = _row_dot(32, 22, _q5_0)
dot_q5_1 = _row_dot(32, 24, _q5_1)
dot_q4_k = _row_dot(256, 144, _q4_k)
dot_q5_k = _row_dot(256, 176, _q5_k)
dot_q6_k = _row_dot(256, 210, _q6_k)
