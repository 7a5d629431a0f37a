"""Row dot products written as explicit LLVM vector code: one quantized row . x in one pass (the
K-quants and float types; the legacy types go 8 rows at a time, interleave.py, on the helpers
here).

Numba hands loops to LLVM's vectorizers, which do well on long loops and badly on the 16- and
32-value loops inside quantized blocks: it either unrolls them into scalar code or vectorizes the
loop over blocks with gathers, 4-10x slower. So the hot loop is emitted here directly through
numba's @intrinsic with llvmlite, keeping the accumulators in registers across the whole row.

Quantized rows meet x quantized to 8 bits, once per mat-vec (matvec.quantize_x), as llama.cpp
does: xq int8 [n_cols] and xd float32 [n_cols / 32], one scale per 32 values (x ~ xq * xd; for
K-quant weights llama.cpp's Q8_K blocks, one scale per 256 repeated in its 8 slots), and
xs32 / xs16, the sums of xq * xd over each 32 / 16 values. Per 32 weights, the block's unsigned
integer codes u (nibbles; 5- and 6-bit codes) dot xq in the integer unit: 8 int32 lanes of 4
products each (idot: AVX-512 VNNI / AVX-VNNI: one vpdpbusd; AVX2: vpmaddubsw, then vpmaddwd by
ones; ARM with the dot product extension: two sdot; elsewhere plain vector integer math for
LLVM to lower, which took 4-5x the instructions of the AVX2 path on x86 and 3.5-4.6x those of
sdot on AArch64). Every path computes the same lanes and the same float arithmetic after them,
in the same order (IN_ORDER): the same products on every x86 CPU and on ARM
(tests/test_kernels.py). The lanes become floats once per block and are scaled by d_w * xd into
a float accumulator. A block's offset or minimum never touches the lanes:

    sum_j d (u_j - z) xq_j xd  =  d xd sum_j u_j xq_j  -  d z xs32

so -z (Q6_K's 32) or the minimum multiplies xs32 / xs16 in its own accumulator. Each type says
how its blocks unpack into codes, scales and offsets once (QUANT_TYPES: Sub); the decode row
dots here and the prefill GEMM (gemm.py) share that. Float rows (F32, F16, BF16) take float32 x
and 32 float lanes.

Each intrinsic is `rows_<type>(data, x, xq, xd, xs32, xs16, f16, out, start, stop)`: rows
start..stop of data uint8 [rows, row_bytes] times each x row; xq/xd/xs32/xs16 as above; f16 the
float32 [65536] table of every f16 bit pattern (one load per scale, no conversion code).
"""

from __future__ import annotations

import copy
import os
import zlib
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
# Lane arithmetic is contracted into FMAs but never reassociated: where LLVM may choose the order
# of additions it chooses by vector width and target (the prefill GEMM's 8- and 16-lane panels,
# AArch64's K-quant rows came out different by 5e-7), and every CPU would round its own way.
# Measured against "fast": decode 56.2 tok/s either way (three pairs), prefill the same.
IN_ORDER = ("contract",)


def vec(t, n):
    return ir.VectorType(t, n)


class Emitter:
    """IR helpers over one call's arrays: loads at byte/element offsets, splats, lane math.

    `row` (i8*) is the quantized row that bytes_at/uint_at/half_at read from; `f16` the f16
    table; the rest are the call's other data pointers, by name."""

    def __init__(self, context, builder, sig, args, names):
        self.b = builder
        self.arrays = []
        for name, t, v in zip(names, sig.args, args):
            if isinstance(t, types.Array):
                a = cgutils.create_struct_proxy(t)(context, builder, value=v)
                self.arrays.append(a)
                v = a.data
            else:
                self.arrays.append(None)
            if name:
                setattr(self, name, v)

    def shape(self, i, dim=0):
        """Dimension dim of the call's i-th array, i64."""
        return self.b.extract_value(self.arrays[i].shape, dim)

    def at_row(self, row):
        """The same emitter reading another quantized row."""
        other = copy.copy(self)
        other.row = row
        return other

    def gep(self, ptr, offset):
        return self.b.gep(ptr, [offset if isinstance(offset, ir.Value) else ir.Constant(I64, offset)])

    def bytes_at(self, base, offset, n):
        """<n x i8> at row + base + offset (unaligned)."""
        p = self.b.bitcast(self.gep(self.gep(self.row, base), offset), vec(I8, n).as_pointer())
        return self.b.load(p, align=1)

    def prefetch(self, base, offset):
        """Ask for the cache line at row + base + offset ahead of its use (read, keep in cache)."""
        self.prefetch_at(self.gep(self.gep(self.row, base), offset))

    def prefetch_at(self, ptr):
        fn = declare(self.b.module, "llvm.prefetch.p0", ir.VoidType(), [ir.PointerType(I8), I32, I32, I32])
        p = self.b.bitcast(ptr, ir.PointerType(I8))
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
        return self.b.fmul(a, b, flags=IN_ORDER)

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=IN_ORDER)

    def fma(self, a, b, acc):
        """acc + a * b, contracted into an FMA where the CPU has one."""
        return self.fadd(acc, self.fmul(a, b))

    def halves(self, v):
        n = v.type.count // 2
        lo = self.b.shuffle_vector(v, v, self.const(I32, n, list(range(n))))
        hi = self.b.shuffle_vector(v, v, self.const(I32, n, list(range(n, 2 * n))))
        return lo, hi

    def store_first(self, v, dst, valid):
        """v <n x float> to dst[0:n], or only its first valid lanes where valid (i64) < n (the
        last rows of a matrix whose row count is no multiple of n)."""
        b, n = self.b, v.type.count
        with b.if_else(b.icmp_signed(">=", valid, ir.Constant(I64, n))) as (then, otherwise):
            with then:
                b.store(v, b.bitcast(dst, vec(F32, n).as_pointer()), align=4)
            with otherwise:
                for lane in range(n):
                    with b.if_then(b.icmp_signed(">", valid, ir.Constant(I64, lane))):
                        b.store(b.extract_element(v, ir.Constant(I32, lane)), self.gep(dst, lane))

    def reduce(self, v):
        """Sum of the lanes: halve the vector until one lane is left."""
        while v.type.count > 1:
            lo, hi = self.halves(v)
            v = self.fadd(lo, hi)
        return self.b.extract_element(v, ir.Constant(I32, 0))



ILANES = 8  # quantized rows: 8 int32 partial sums per 32 weights, 8 float lanes per accumulator
LANES = 32  # float rows: a 32-lane float accumulator (2 AVX-512 / 4 AVX2 / 8 NEON registers)
# Each step asks for the bytes this far ahead of it (llvm.prefetch): with the hardware
# prefetcher alone a 178 MB Q8_0 mat-vec read 5.1-5.4 GB/s, with this 7.9-8.5 (Q5_0: 4.0 -> 4.9).
PREFETCH_BYTES = 4096

CPU_FEATURES = dict(llvm.get_host_cpu_features())
if os.environ.get("EDGELLM_NO_AVX512"):  # the AVX2 paths on an AVX-512 CPU (tests; a cache folder of its own)
    CPU_FEATURES = {k: v and not k.startswith("avx512") and k != "avxvnni" for k, v in CPU_FEATURES.items()}
# EDGELLM_GENERIC_SIMD: none of the x86 paths, the code ARM and other CPUs run (tests on x86)
X86 = not os.environ.get("EDGELLM_GENERIC_SIMD") and llvm.get_process_triple().startswith(("x86_64", "i386", "i686"))
VNNI_512 = X86 and bool(CPU_FEATURES.get("avx512vnni"))
VNNI = VNNI_512 and bool(CPU_FEATURES.get("avx512vl")) or X86 and bool(CPU_FEATURES.get("avxvnni"))  # 256-bit forms
AVX2 = X86 and bool(CPU_FEATURES.get("avx2"))  # laptops and servers without AVX-512 (Zen 1-3, most Intel client CPUs)
NEON = llvm.get_process_triple().startswith(("aarch64", "arm64"))  # every 64-bit ARM CPU
# ARMv8.2's dot product (sdot): Raspberry Pi 5 (Cortex-A76), Apple M, Graviton 2+; not the Pi 4
DOTPROD = NEON and bool(CPU_FEATURES.get("dotprod"))


def declare(module, name, ret, args):
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, args), name)


def outlined(tag, codegen):
    """An intrinsic codegen emitted as its own LLVM function (noinline, one copy per module and
    argument types) and called, instead of inline at every call site. Numba compiles each njit
    function together with all it calls and optimizes the whole at every level; the kernels
    inlined into one function made LLVM's work grow faster than their size (a cold compile of
    the team's entry took 17 s, its parts alone 2 s)."""

    def wrapper(context, builder, sig, args):
        module = builder.module
        name = f"edgellm.{tag}.{zlib.crc32(str(sig).encode()):08x}"
        void = sig.return_type == types.void
        fn = module.globals.get(name)
        if fn is None:
            ret = ir.VoidType() if void else context.get_value_type(sig.return_type)
            fn = ir.Function(module, ir.FunctionType(ret, [a.type for a in args]), name)
            fn.linkage = "linkonce_odr"
            fn.attributes.add("noinline")
            body = ir.IRBuilder(fn.append_basic_block("entry"))
            value = codegen(context, body, sig, list(fn.args))
            body.ret_void() if void else body.ret(value)
        result = builder.call(fn, args)
        return context.get_dummy_value() if void else result

    return wrapper


def idot(e, u, q, acc=None):
    """<8 x i32>: acc + (lane i = sum over j < 4 of u[4i + j] * q[4i + j]), for u <32 x i8>
    unsigned codes and q <32 x i8> signed (|q| <= 127): exact, no overflow. Without VNNI, u
    must stay below 129 (AVX2's vpmaddubsw sums two products in int16), with DOTPROD below 128
    (sdot's bytes are signed: there u may be any signed byte instead; signed codes: idot_signed)."""
    b = e.b
    acc = acc if acc is not None else e.const(I32, 8, 0)
    if DOTPROD:  # sdot: 4 int32 lanes of 4 signed byte products per 16 bytes, the same lanes
        v16, v4 = vec(I8, 16), vec(I32, 4)
        fn = declare(b.module, "llvm.aarch64.neon.sdot.v4i32.v16i8", v4, [v4, v16, v16])
        lo, hi = (b.call(fn, [a, x, y]) for a, x, y in zip(e.halves(acc), e.halves(u), e.halves(q)))
        return b.shuffle_vector(lo, hi, e.const(I32, 8, list(range(8))))
    if VNNI:
        v8 = vec(I32, 8)
        fn = declare(b.module, "llvm.x86.avx512.vpdpbusd.256", v8, [v8, v8, v8])
        return b.call(fn, [acc, b.bitcast(u, v8), b.bitcast(q, v8)])
    if AVX2:  # vpmaddubsw: 16 int16 sums of 2 products; vpmaddwd by ones: 8 int32 sums of 4
        v32, v16 = vec(I8, 32), vec(I16, 16)
        pairs = b.call(declare(b.module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v32, v32]), [u, q])
        return b.add(acc, _sum_pairs(e, pairs))
    # Elsewhere plain integer vector math, which LLVM lowers to widening multiply-adds.
    prod = b.mul(b.zext(u, vec(I32, 32)), b.sext(q, vec(I32, 32)))
    parts = [b.shuffle_vector(prod, prod, e.const(I32, 8, list(range(j, 32, 4)))) for j in range(4)]
    return b.add(acc, b.add(b.add(parts[0], parts[1]), b.add(parts[2], parts[3])))


def idot_signed(e, w, q, acc=None):
    """idot for signed codes w <32 x i8> (-128..127): on AVX2 |w| against q with w's sign (both
    within vpmaddubsw's range), with DOTPROD w as it is, elsewhere idot of w + 128 minus 128 * q."""
    b = e.b
    if DOTPROD:
        return idot(e, w, q, acc)
    if AVX2 and not VNNI:
        v32 = vec(I8, 32)
        sign = b.call(declare(b.module, "llvm.x86.avx2.psign.b", v32, [v32, v32]), [q, w])
        magnitude = b.call(declare(b.module, "llvm.abs.v32i8", v32, [v32, ir.IntType(1)]),
                           [w, ir.Constant(ir.IntType(1), 0)])
        return idot(e, magnitude, sign, acc)
    flip = e.const(I8, 32, -128)
    return b.sub(idot(e, b.xor(w, flip), q, acc), idot(e, flip, q))


def _sum_pairs(e, pairs):
    """<8 x i32> from <16 x i16>: lane i = pairs[2i] + pairs[2i + 1] (vpmaddwd by ones)."""
    v16, v8 = vec(I16, 16), vec(I32, 8)
    fn = declare(e.b.module, "llvm.x86.avx2.pmadd.wd", v8, [v16, v16])
    return e.b.call(fn, [pairs, e.const(I16, 16, 1)])


# Not on x86: the prefill GEMM's code vectors hold their lanes' first codes, then their second
# codes (gemm._code_vectors), which idot16 multiplies by the two x codes as scalars: on ARM a
# multiply-accumulate by element (smlal), where pairs within a lane took widening multiplies and
# shuffles (~27 AArch64 instructions and spills per dot).
SPLIT_PAIRS = not X86


def idot16(e, a, b, acc):
    """<n x i32>: acc + (lane i = a[2i] * b[2i] + a[2i + 1] * b[2i + 1]) for a, b <n x i32>
    (n = 8 or 16) holding pairs of signed 16-bit values, b the same pair in every lane
    (VNNI: vpdpwssd; AVX2: vpmaddwd; elsewhere, with SPLIT_PAIRS, a's n first values then its
    n second ones, each times one of b's two)."""
    bld = e.b
    n = a.type.count
    vn = vec(I32, n)
    if SPLIT_PAIRS:
        a16, b16 = bld.bitcast(a, vec(I16, 2 * n)), bld.bitcast(b, vec(I16, 2 * n))

        def part(v, lanes):
            return bld.sext(bld.shuffle_vector(v, v, e.const(I32, n, lanes)), vn)

        first = bld.mul(part(a16, list(range(n))), part(b16, [0] * n))
        second = bld.mul(part(a16, list(range(n, 2 * n))), part(b16, [1] * n))
        return bld.add(acc, bld.add(first, second))
    if VNNI_512 if n == 16 else VNNI:
        fn = declare(bld.module, f"llvm.x86.avx512.vpdpwssd.{32 * n}", vn, [vn, vn, vn])
        return bld.call(fn, [acc, a, b])
    if AVX2 and n == 8:
        v16 = vec(I16, 16)
        fn = declare(bld.module, "llvm.x86.avx2.pmadd.wd", vn, [v16, v16])
        return bld.add(acc, bld.call(fn, [bld.bitcast(a, v16), bld.bitcast(b, v16)]))
    wide = [bld.sext(bld.bitcast(v, vec(I16, 2 * n)), vec(I32, 2 * n)) for v in (a, b)]
    prod = bld.mul(wide[0], wide[1])
    even = bld.shuffle_vector(prod, prod, e.const(I32, n, list(range(0, 2 * n, 2))))
    odd = bld.shuffle_vector(prod, prod, e.const(I32, n, list(range(1, 2 * n, 2))))
    return bld.add(acc, bld.add(even, odd))


# --- what a quantized type is, 32 values at a time ----------------------------------------------
@dataclass
class Sub:
    """32 consecutive values of a row: value j = scale * u[j] + off / 32-ish, exactly

        sum_j value_j x_j = scale * (u . x) + off * (sum of x over the 32)

    u: <32 x i8> unsigned codes; scale, off: float. Q6_K scales each 16 on its own: scale_hi
    and off_hi (not None) are those of values 16-31, and off then goes with the sum of x over
    values 0-15 only."""
    u: ir.Value
    scale: ir.Value
    off: ir.Value | None = None
    scale_hi: ir.Value | None = None
    off_hi: ir.Value | None = None


def _nibbles(e, q):
    """<n x i8> -> (low nibbles, high nibbles) as <n x i8>."""
    n = q.type.count
    return e.b.and_(q, e.const(I8, n, 15)), e.b.lshr(q, e.const(I8, n, 4))


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


def _k4(qs_at, qh_at=None):
    """Q4_K (144 bytes: d | dmin | scales u8[12] | qs u8[128]) and Q5_K (176: ... | qh u8[32] at
    16 | qs at 48): x = d * sc_s * u - dmin * m_s over 8 sub-blocks of 32; sub-blocks 2i and
    2i + 1 are the low and high nibbles of qs[32i : 32i + 32] (Q5_K: bit 4 of value l of
    sub-block s in bit s of qh[l])."""

    def subs(e, base):
        d, dmin = e.half_at(base, 0), e.half_at(base, 2)
        qh = e.bytes_at(base, qh_at, 32) if qh_at is not None else None
        out = []
        for i in range(4):
            lo, hi = _nibbles(e, e.bytes_at(base, qs_at + 32 * i, 32))
            if qh is not None:
                one, four = e.const(I8, 32, 1), e.const(I8, 32, 4)
                lo = e.b.or_(lo, e.b.shl(e.b.and_(e.b.lshr(qh, e.const(I8, 32, 2 * i)), one), four))
                hi = e.b.or_(hi, e.b.shl(e.b.and_(e.b.lshr(qh, e.const(I8, 32, 2 * i + 1)), one), four))
            for j, u in enumerate((lo, hi)):
                sc, m = _scale_min_k4(e, base, 2 * i + j)
                out.append(Sub(u, e.fmul(d, sc), e.fmul(e.b.fneg(dmin), m)))
        return out

    return subs


def _k4_fields(e, base):
    """Q4_K / Q5_K: (scales, offsets) [<8 x float>] of the block's 8 sub-blocks, d * sc_s and
    -dmin * m_s, from the 12 packed bytes at 4 in one pass of vector integer code (the decode
    dot's, where _scale_min_k4 per sub-block was ~12 scalar instructions each)."""
    b = e.b
    # the 12 scale bytes (+ 4 of qs) as two 8-lane halves: one 16-lane vector would be a zmm
    # register, and on Intel a 512-bit instruction in flight takes port 1 from all the others
    lo8, hi8 = b.zext(e.bytes_at(base, 4, 8), vec(I32, 8)), b.zext(e.bytes_at(base, 12, 8), vec(I32, 8))

    def pick(idx):
        return b.shuffle_vector(lo8, hi8, e.const(I32, 8, idx))

    low = b.icmp_unsigned("<", e.const(I32, 8, list(range(8))), e.const(I32, 8, 4))
    c63, c15, c4, c6 = (e.const(I32, 8, k) for k in (63, 15, 4, 6))
    p_sc, q_sc = pick([0, 1, 2, 3, 8, 9, 10, 11]), pick([0, 1, 2, 3, 0, 1, 2, 3])
    p_m, q_m = pick([4, 5, 6, 7, 8, 9, 10, 11]), pick([4, 5, 6, 7, 4, 5, 6, 7])
    sc = b.select(low, b.and_(p_sc, c63), b.or_(b.and_(p_sc, c15), b.shl(b.lshr(q_sc, c6), c4)))
    m = b.select(low, b.and_(p_m, c63), b.or_(b.lshr(p_m, c4), b.shl(b.lshr(q_m, c6), c4)))
    d, dmin = e.half_at(base, 0), e.half_at(base, 2)
    return [e.fmul(e.splat(d, 8), e.to_float(sc))], [e.fmul(e.splat(b.fneg(dmin), 8), e.to_float(m))]


def _q6_k_fields(e, base):
    """Q6_K: (scales, offsets) of the block's 16 sub-blocks of 16 values, d * sc and -32 d * sc
    (sc the int8 scales at 192), each as two <8 x float> halves (not one zmm: _k4_fields)."""
    d = e.splat(e.half_at(base, 208), 8)
    scales = [e.fmul(d, e.to_float(e.bytes_at(base, 192 + 8 * h, 8))) for h in range(2)]
    return scales, [e.fmul(sc, e.const(F32, 8, -32.0)) for sc in scales]


def _q6_k(e, base):
    """210 bytes: ql u8[128] | qh u8[64] | scales i8[16] | d f16; x = d * sc * (u - 32) over 16
    sub-blocks of 16. In half h, value l + 32g (l < 32) takes nibble g // 2 of ql[64h + 32(g % 2)
    + l] and bits 2g..2g+1 of qh[32h + l]; its scale is scales[8h + l // 16 + 2g]."""
    d = e.half_at(base, 208)
    three, four = e.const(I8, 32, 3), e.const(I8, 32, 4)
    out = []
    for h in range(2):
        qh = e.bytes_at(base, 128 + 32 * h, 32)
        ql0, ql1 = _nibbles(e, e.bytes_at(base, 64 * h, 32)), _nibbles(e, e.bytes_at(base, 64 * h + 32, 32))
        for g, low4 in enumerate((ql0[0], ql1[0], ql0[1], ql1[1])):
            u = e.b.or_(low4, e.b.shl(e.b.and_(e.b.lshr(qh, e.const(I8, 32, 2 * g)), three), four))
            s = 8 * h + 2 * g
            lo = e.fmul(d, e.b.sitofp(e.b.sext(e.b.trunc(e.uint_at(base, 192 + s, I8), I8), I32), F32))
            hi = e.fmul(d, e.b.sitofp(e.b.sext(e.b.trunc(e.uint_at(base, 193 + s, I8), I8), I32), F32))
            m32 = ir.Constant(F32, -32.0)
            out.append(Sub(u, lo, e.fmul(lo, m32), hi, e.fmul(hi, m32)))
    return out


@dataclass(frozen=True)
class QuantType:
    """A quantized block format as the kernels see it: block_values values in block_bytes
    bytes, unpacked by subs(e, base) into block_values / 32 Subs (base: the block's byte offset
    in e.row). halves: its Subs scale each 16 values on their own (scale_hi, off_hi)."""
    name: str
    block_values: int
    block_bytes: int
    subs: object
    halves: bool = False
    fields: object = None  # fields(e, base): every Sub's scale and offset as two lists of
    # <8 x float> (one value per 32 values, or per 16 with halves) for the decode dot, instead
    # of scalars


QUANT_TYPES = {
    "q4_k": QuantType("q4_k", 256, 144, _k4(qs_at=16), fields=_k4_fields),
    "q5_k": QuantType("q5_k", 256, 176, _k4(qs_at=48, qh_at=16), fields=_k4_fields),
    "q6_k": QuantType("q6_k", 256, 210, _q6_k, halves=True, fields=_q6_k_fields),
}


# --- decode: rows . x ------------------------------------------------------------------------------
ROWS_ARGS = ("data", "x", "xq", "xd", "xs32", "xs16", "f16", "out", "start", "stop")


def _xq(e, v):
    """<32 x i8>: xq[v : v + 32]."""
    p = e.b.bitcast(e.gep(e.xq, v), vec(I8, 32).as_pointer())
    return e.b.load(p, align=1)


def _dot_quant(e, qt: QuantType, n_cols):
    """e.row . x for a K-quant type (e's x pointers at one x row): per block its scales times
    xd and its offsets times the sums of x as vectors of 8 (qt.fields), then per Sub the 8 int32
    lanes of u . xq, as floats times one lane of the scales spread, into one of two accumulators
    (two FMA chains); the offsets into their own."""
    builder = e.b
    n_blocks = builder.udiv(n_cols, ir.Constant(I64, qt.block_values))
    accs = [cgutils.alloca_once_value(builder, e.const(F32, ILANES, 0.0)) for _ in range(2)]
    n_fields = qt.block_values // (16 if qt.halves else 32)
    off_lanes = [cgutils.alloca_once_value(builder, e.const(F32, 8, 0.0)) for _ in range(-(-n_fields // 8))]

    def block(b):
        subs = qt.subs(e, e.mul(b, qt.block_bytes))
        scales, offs = qt.fields(e, e.mul(b, qt.block_bytes))
        sums_at = e.xs16 if qt.halves else e.xs32
        scaled = []
        for ch, (scale, off) in enumerate(zip(scales, offs)):  # fields 8 ch .. 8 ch + 7
            sums = e.floats(sums_at, e.add(e.mul(b, n_fields), 8 * ch), 8)
            builder.store(e.fma(off, sums, builder.load(off_lanes[ch])), off_lanes[ch])
            if qt.halves:  # scales of 16 values: xd of their 32 (subs 4 ch .. 4 ch + 3) twice
                xd = e.floats(e.xd, e.add(e.mul(b, len(subs)), 4 * ch), 4)
                xd = builder.shuffle_vector(xd, xd, e.const(I32, 8, [k // 2 for k in range(8)]))
            else:
                xd = e.floats(e.xd, e.mul(b, len(subs)), 8)
            scaled.append(e.fmul(scale, xd))
        for i, sub in enumerate(subs):
            v = e.add(e.mul(b, len(subs)), i)
            lanes = e.to_float(idot(e, sub.u, _xq(e, e.mul(v, 32))))
            if qt.halves:
                chunk, at = scaled[(2 * i) // 8], (2 * i) % 8
                spread = [at] * 4 + [at + 1] * 4
            else:
                chunk, spread = scaled[0], [i] * ILANES
            sub_scales = builder.shuffle_vector(chunk, chunk, e.const(I32, ILANES, spread))
            builder.store(e.fma(sub_scales, lanes, builder.load(accs[i % 2])), accs[i % 2])

    with cgutils.for_range(builder, n_blocks) as loop:
        for line in range(0, qt.block_bytes, 64):
            e.prefetch(e.mul(loop.index, qt.block_bytes), PREFETCH_BYTES + line)
        block(loop.index)
    total = e.reduce(e.fadd(builder.load(accs[0]), builder.load(accs[1])))
    for lanes in off_lanes:
        total = e.fadd(total, e.reduce(builder.load(lanes)))
    return total


def _dot_float(block_bytes, widen):
    """e.row . x for a float type: 32 values per step, widened to float32 by widen(e, b) and
    multiplied by x into a 32-lane accumulator."""

    def dot(e, n_cols):
        builder = e.b
        acc = cgutils.alloca_once_value(builder, e.const(F32, LANES, 0.0))
        with cgutils.for_range(builder, builder.udiv(n_cols, ir.Constant(I64, 32))) as loop:
            b = loop.index
            for line in range(0, block_bytes, 64):
                e.prefetch(e.mul(b, block_bytes), PREFETCH_BYTES + line)
            w = widen(e, b)
            builder.store(e.fma(w, e.floats(e.x, e.mul(b, 32), 32), builder.load(acc)), acc)
        return e.reduce(builder.load(acc))

    return dot


def _rows(name, dot):
    """rows_<type>(data, x, xq, xd, xs32, xs16, f16, out, start, stop): out[k, r] = row r of
    data . x[k] for rows start..stop and every x row k; data uint8 [rows, row_bytes]; x
    float32 [n, n_cols] and its quantized form (matvec.quantize_into_8); out float32 [n, rows].
    dot(e, n_cols) emits one row's dot. Outlined: one LLVM function per type."""

    def generic(typingctx, data, x, xq, xd, xs32, xs16, f16, out, start, stop):
        sig = types.void(data, x, xq, xd, xs32, xs16, f16, out, start, stop)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, ROWS_ARGS)
            rows, row_bytes = e.shape(0, 0), e.shape(0, 1)
            n, n_cols = e.shape(1, 0), e.shape(1, 1)
            blocks32, blocks16 = builder.udiv(n_cols, ir.Constant(I64, 32)), builder.udiv(n_cols, ir.Constant(I64, 16))
            with cgutils.for_range_slice(builder, e.start, e.stop, ir.Constant(I64, 1)) as (r, _):
                row = e.at_row(e.gep(e.data, builder.mul(r, row_bytes)))
                with cgutils.for_range(builder, n) as loop:
                    k = loop.index
                    one = copy.copy(row)  # this x row's pointers
                    one.x, one.xq = e.gep(e.x, builder.mul(k, n_cols)), e.gep(e.xq, builder.mul(k, n_cols))
                    one.xd, one.xs32 = e.gep(e.xd, builder.mul(k, blocks32)), e.gep(e.xs32, builder.mul(k, blocks32))
                    one.xs16 = e.gep(e.xs16, builder.mul(k, blocks16))
                    builder.store(dot(one, n_cols), e.gep(e.out, builder.add(builder.mul(k, rows), r)))

        return sig, outlined(f"rows_{name}", codegen)

    return intrinsic(generic)


def _widen_f32(e, b):
    return e.floats(e.b.bitcast(e.row, F32.as_pointer()), e.mul(b, 32), 32)


def _widen_f16(e, b):  # by the CPU's converter (F16C, NEON)
    p = e.b.bitcast(e.gep(e.row, e.mul(b, 64)), vec(ir.HalfType(), 32).as_pointer())
    return e.b.fpext(e.b.load(p, align=1), vec(F32, 32))


def _widen_bf16(e, b):  # bf16: the top halves of float32s
    p = e.b.bitcast(e.gep(e.row, e.mul(b, 64)), vec(I16, 32).as_pointer())
    bits = e.b.shl(e.b.zext(e.b.load(p, align=1), vec(I32, 32)), e.const(I32, 32, 16))
    return e.b.bitcast(bits, vec(F32, 32))


rows_f32 = _rows("f32", _dot_float(128, _widen_f32))
rows_f16 = _rows("f16", _dot_float(64, _widen_f16))
rows_bf16 = _rows("bf16", _dot_float(64, _widen_bf16))
rows_q4_k, rows_q5_k, rows_q6_k = (
    _rows(name, lambda e, n_cols, qt=QUANT_TYPES[name]: _dot_quant(e, qt, n_cols)) for name in ("q4_k", "q5_k", "q6_k"))


# --- x to integers -------------------------------------------------------------------------------
def _store_codes(e, blk, codes, d, code_t):
    """One block of 32 codes (floats holding integers) into xq, its scale d into xd and the
    sums of d * codes over it and its halves into xs32 and xs16."""
    b = e.b
    p = b.bitcast(e.gep(e.xq, e.mul(blk, 32)), vec(code_t, 32).as_pointer())
    b.store(b.fptosi(codes, vec(code_t, 32)), p, align=1)
    lo, hi = e.halves(codes)
    lo, hi = e.reduce(lo), e.reduce(hi)  # sums of integers < 2^24: exact in any order
    b.store(d, e.gep(e.xd, blk))
    b.store(b.fmul(d, b.fadd(lo, hi)), e.gep(e.xs32, blk))
    b.store(b.fmul(d, lo), e.gep(e.xs16, e.mul(blk, 2)))
    b.store(b.fmul(d, hi), e.gep(e.xs16, e.add(e.mul(blk, 2), 1)))


def _quantize_row(bits):
    """quantize_row_<bits>(x, xq, xd, xs32, xs16): one row x float32 [n_cols] into codes xq
    (int8 or int16 [n_cols]) with a scale per 32 values: codes round(x * (2^(bits-1) - 1) /
    max |x|) (halves to even), xd = max |x| / (2^(bits-1) - 1), for 8 bits rounded to f16 as
    llama.cpp stores it in its Q8_0 blocks (the x of Q4_0, Q5_0, Q8_0 weights); xs32 / xs16:
    sums of xd * codes over each 32 / 16 values."""
    qmax = float((1 << (bits - 1)) - 1)
    code_t = ir.IntType(bits)

    def generic(typingctx, x, xq, xd, xs32, xs16):
        sig = types.void(x, xq, xd, xs32, xs16)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, ("x", "xq", "xd", "xs32", "xs16"))
            b = builder
            m = b.module
            v32 = vec(F32, 32)
            fabs = declare(m, "llvm.fabs.v32f32", v32, [v32])
            rint = declare(m, "llvm.rint.v32f32", v32, [v32])
            fmax = declare(m, "llvm.vector.reduce.fmax.v32f32", F32, [v32])
            with cgutils.for_range(b, b.udiv(e.shape(0), ir.Constant(I64, 32))) as loop:
                blk = loop.index
                v = e.floats(e.x, e.mul(blk, 32), 32)
                amax = b.call(fmax, [b.call(fabs, [v])])
                positive = b.fcmp_ordered(">", amax, ir.Constant(F32, 0.0))
                inv = b.select(positive, b.fdiv(ir.Constant(F32, qmax), amax), ir.Constant(F32, 0.0))
                codes = b.call(rint, [b.fmul(v, e.splat(inv, 32))])  # exact, not fast-math
                d = b.fdiv(amax, ir.Constant(F32, qmax))
                if bits == 8:
                    d = b.fpext(b.fptrunc(d, ir.HalfType()), F32)
                _store_codes(e, blk, codes, d, code_t)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(generic)


quantize_row_8 = _quantize_row(8)
quantize_row_16 = _quantize_row(16)


@intrinsic
def quantize_row_8k(typingctx, x, xq, xd, xs32, xs16):
    """quantize_row_8 as llama.cpp's Q8_K, the x of the K-quant weights (n_cols a multiple of
    256): per 256 values, m = the value of largest magnitude (the larger one's sign on a tie),
    codes min(round(-127 / m * x), 127), scale 1 / (-127 / m) in float32, the same in each of
    the block's 8 xd slots (so the row dots read it per 32 as for the other types)."""
    sig = types.void(x, xq, xd, xs32, xs16)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args, ("x", "xq", "xd", "xs32", "xs16"))
        b = builder
        m = b.module
        v32 = vec(F32, 32)
        rint = declare(m, "llvm.rint.v32f32", v32, [v32])
        vmax = declare(m, "llvm.maxnum.v32f32", v32, [v32, v32])
        vmin = declare(m, "llvm.minnum.v32f32", v32, [v32, v32])
        rmax = declare(m, "llvm.vector.reduce.fmax.v32f32", F32, [v32])
        rmin = declare(m, "llvm.vector.reduce.fmin.v32f32", F32, [v32])
        with cgutils.for_range(b, b.udiv(e.shape(0), ir.Constant(I64, 256))) as loop:
            first = e.mul(loop.index, 8)
            vs = [e.floats(e.x, e.mul(e.add(first, i), 32), 32) for i in range(8)]
            hi, lo = vs[0], vs[0]
            for v in vs[1:]:
                hi, lo = b.call(vmax, [hi, v]), b.call(vmin, [lo, v])
            top, bottom = b.call(rmax, [hi]), b.call(rmin, [lo])
            extreme = b.select(b.fcmp_ordered(">", b.fneg(bottom), top), bottom, top)
            nonzero = b.fcmp_ordered("!=", extreme, ir.Constant(F32, 0.0))
            iscale = b.select(nonzero, b.fdiv(ir.Constant(F32, -127.0), extreme), ir.Constant(F32, 0.0))
            d = b.select(nonzero, b.fdiv(ir.Constant(F32, 1.0), iscale), ir.Constant(F32, 0.0))
            for i, v in enumerate(vs):
                codes = b.call(vmin, [b.call(rint, [b.fmul(v, e.splat(iscale, 32))]), e.const(F32, 32, 127.0)])
                _store_codes(e, e.add(first, i), codes, d, I8)
        return context.get_dummy_value()

    return sig, codegen


# --- f16 scalars ---------------------------------------------------------------------------------
def _scalar(doc, **forms):
    """A scalar intrinsic: forms maps an argument type's name to (result type, emit(builder, value))."""

    def generic(typingctx, value):
        form = forms.get(str(value))
        if form is None:
            return None
        ret, emit = form
        return ret(value), lambda context, builder, sig, args: emit(builder, args[0])

    generic.__doc__ = doc
    return intrinsic(generic)


round_f16 = _scalar(
    """A float32 rounded to the nearest f16 (to nearest, ties to even) and back.""",
    float32=(types.float32, lambda b, v: b.fpext(b.fptrunc(v, ir.HalfType()), F32)))
f16_bits = _scalar(
    """The f16 bit pattern (uint16) nearest a float32 (to nearest, ties to even).""",
    float32=(types.uint16, lambda b, v: b.bitcast(b.fptrunc(v, ir.HalfType()), I16)))


# --- exp over arrays -----------------------------------------------------------------------------
EXP_LANES = 16
# e^x = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts,
# so that r is exact), e^r by its degree-6 Taylor polynomial (error < 2e-7 relative on that range)
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
EXP_POLY = (1.0, 1.0, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720)
# Below this, e^x is under float32 resolution against the row's largest term (1 after softmax's
# shift) and would be a slow denormal: it is 0.
EXP_ZERO_BELOW = -80.0


def _exp_lanes(e, x):
    """e^x for <16 x float> x <= 0-ish (softmax scores after the max is subtracted); 0 below
    EXP_ZERO_BELOW (and for -inf)."""
    b = e.b
    n_lanes = x.type.count
    vf = vec(F32, n_lanes)
    floor = declare(b.module, f"llvm.floor.v{n_lanes}f32", vf, [vf])
    clamped = b.select(b.fcmp_ordered("<", x, e.const(F32, n_lanes, EXP_ZERO_BELOW)), e.const(F32, n_lanes, EXP_ZERO_BELOW), x)
    n = b.call(floor, [b.fadd(b.fmul(clamped, e.const(F32, n_lanes, 1.4426950408889634)), e.const(F32, n_lanes, 0.5))])
    r = b.fsub(clamped, b.fmul(n, e.const(F32, n_lanes, LN2_HI)))
    r = b.fsub(r, b.fmul(n, e.const(F32, n_lanes, LN2_LO)))
    p = e.const(F32, n_lanes, EXP_POLY[-1])
    for c in reversed(EXP_POLY[:-1]):
        p = b.fadd(b.fmul(p, r), e.const(F32, n_lanes, c))
    bits = b.shl(b.add(b.fptosi(n, vec(I32, n_lanes)), e.const(I32, n_lanes, 127)), e.const(I32, n_lanes, 23))
    y = b.fmul(p, b.bitcast(bits, vf))
    return b.select(b.fcmp_unordered("<", x, e.const(F32, n_lanes, EXP_ZERO_BELOW)), e.const(F32, n_lanes, 0.0), y)


@intrinsic
def exp_inplace(typingctx, a):
    """a[:] = e^a (float32, 1-D, contiguous) with _exp_lanes, 16 values at a time (the tail
    through a splat of each remaining value)."""
    sig = types.void(a)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args, ("a",))
        n = e.shape(0)
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(I64, EXP_LANES))) as loop:
            p = builder.bitcast(e.gep(e.a, e.mul(loop.index, EXP_LANES)), vec(F32, EXP_LANES).as_pointer())
            builder.store(_exp_lanes(e, builder.load(p, align=4)), p, align=4)
        done = e.mul(builder.udiv(n, ir.Constant(I64, EXP_LANES)), EXP_LANES)
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            p = e.gep(e.a, builder.add(done, loop.index))
            one = _exp_lanes(e, e.splat(builder.load(p), EXP_LANES))
            builder.store(builder.extract_element(one, ir.Constant(I32, 0)), p)
        return context.get_dummy_value()

    return sig, codegen


# --- decode attention's products, in one order on every CPU ---------------------------------------
# A numba loop that fast-math lets LLVM reassociate sums in the order its vector width and target
# choose: the decode attention's scores differed between AVX2 and AVX-512 machines, and with them
# which of two near-tied tokens a greedy decode took. These keep their order written out.
DOT_LANES = 8  # partial sums of a dot (an AVX2 register; on AVX-512 LLVM keeps them one)


def _widen8(e, rows, row, j, f16):
    """<8 x float>: values j..j+7 of row `row` of rows (float32, or uint16 f16 bits if f16)."""
    b = e.b
    if f16:
        p = b.bitcast(e.gep(rows, b.add(row, j)), vec(ir.HalfType(), DOT_LANES).as_pointer())
        return b.fpext(b.load(p, align=2), vec(F32, DOT_LANES))
    return e.floats(rows, b.add(row, j), DOT_LANES)


def _widen1(e, rows, at, f16):
    """The float32 at rows + at (uint16 f16 bits if f16)."""
    b = e.b
    if f16:
        return b.fpext(b.bitcast(b.load(e.gep(rows, at)), ir.HalfType()), F32)
    return b.load(e.gep(rows, at))


@intrinsic
def qk_dots(typingctx, q, keys, scores, col):
    """scores[r, col + i] = q[r] . keys[i] for every query row r and key row i: q float32 [g, hd],
    keys [nk, hd] float32 or uint16 (f16 bits, widened as read), scores float32 [g, >= col + nk].
    Each dot keeps DOT_LANES partial sums, lane l of values l, l + 8, ... in order (multiplies
    contracted into FMAs), reduced by halving, then the values past the last multiple of 8 added
    in order. Four queries go against two keys at a time (8 accumulators, each key widened once
    for them), other queries one at a time against four."""
    f16 = keys.dtype == types.uint16
    sig = types.void(q, keys, scores, col)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args, ("q", "keys", "scores", "col"))
        bld = builder
        g, hd, nk, width = e.shape(0, 0), e.shape(0, 1), e.shape(1, 0), e.shape(2, 1)
        chunks = bld.udiv(hd, ir.Constant(I64, DOT_LANES))
        full = e.mul(chunks, DOT_LANES)

        def block(r0, nq, i0, nkk):
            accs = [[cgutils.alloca_once_value(bld, e.const(F32, DOT_LANES, 0.0)) for _ in range(nkk)] for _ in range(nq)]
            q_rows = [bld.mul(e.add(r0, a), hd) for a in range(nq)]
            k_rows = [bld.mul(e.add(i0, c), hd) for c in range(nkk)]
            with cgutils.for_range(bld, chunks) as loop:
                j = e.mul(loop.index, DOT_LANES)
                kv = [_widen8(e, e.keys, k_row, j, f16) for k_row in k_rows]
                for a in range(nq):
                    x = e.floats(e.q, bld.add(q_rows[a], j), DOT_LANES)
                    for c in range(nkk):
                        bld.store(e.fma(x, kv[c], bld.load(accs[a][c])), accs[a][c])
            for a in range(nq):
                for c in range(nkk):
                    total = cgutils.alloca_once_value(bld, e.reduce(bld.load(accs[a][c])))
                    with cgutils.for_range_slice(bld, full, hd, ir.Constant(I64, 1)) as (j, _):
                        x = e.scalar(e.q, bld.add(q_rows[a], j))
                        bld.store(e.fma(x, _widen1(e, e.keys, bld.add(k_rows[c], j), f16), bld.load(total)), total)
                    at = bld.add(bld.mul(e.add(r0, a), width), bld.add(e.col, e.add(i0, c)))
                    bld.store(bld.load(total), e.gep(e.scores, at))

        def keys_by(r0, nq, step):
            pairs = bld.udiv(nk, ir.Constant(I64, step))
            with cgutils.for_range(bld, pairs) as loop:
                block(r0, nq, e.mul(loop.index, step), step)
            with cgutils.for_range_slice(bld, e.mul(pairs, step), nk, ir.Constant(I64, 1)) as (i, _):
                block(r0, nq, i, 1)

        fours = bld.udiv(g, ir.Constant(I64, 4))
        with cgutils.for_range(bld, fours) as loop:
            keys_by(e.mul(loop.index, 4), 4, 2)
        with cgutils.for_range_slice(bld, e.mul(fours, 4), g, ir.Constant(I64, 1)) as (r, _):
            keys_by(r, 1, 4)
        return context.get_dummy_value()

    return sig, outlined("qk_dots_f16" if f16 else "qk_dots", codegen)


@intrinsic
def pv_accumulate(typingctx, probs, values, first, used, acc):
    """acc[r] += sum over t < 8 of probs[r, t] * values[first + t], a block of 8 slots, the
    products added as ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)); a slot whose bit in used is 0
    (no query weighs it, or past the end) counts as zeros, its values unread: probs float32
    [g, 8], values [m, hd_v] float32 or uint16 (f16 bits, widened as read), acc float32 [g,
    hd_v]. Each 8 values of the slots are widened once for every query row."""
    f16 = values.dtype == types.uint16
    sig = types.void(probs, values, first, used, acc)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args, ("probs", "values", "first", "used", "acc"))
        bld = builder
        g, hd_v = e.shape(4, 0), e.shape(4, 1)
        here = [bld.icmp_unsigned("!=", bld.and_(e.used, ir.Constant(I64, 1 << t)), ir.Constant(I64, 0))
                for t in range(8)]
        slots = [bld.mul(bld.select(here[t], e.add(e.first, t), e.first), hd_v) for t in range(8)]

        def products(width, j, value):
            v = [bld.select(here[t], value(slots[t], j), e.const(F32, width, 0.0) if width > 1 else ir.Constant(F32, 0.0))
                 for t in range(8)]
            with cgutils.for_range(bld, g) as rows:
                r = rows.index
                p = [e.scalar(e.probs, e.add(e.mul(r, 8), t)) for t in range(8)]
                if width > 1:
                    p = [e.splat(pt, width) for pt in p]
                prod = [e.fmul(p[t], v[t]) for t in range(8)]
                tree = e.fadd(e.fadd(e.fadd(prod[0], prod[1]), e.fadd(prod[2], prod[3])),
                              e.fadd(e.fadd(prod[4], prod[5]), e.fadd(prod[6], prod[7])))
                at = bld.add(bld.mul(r, hd_v), j)
                if width > 1:
                    ptr = bld.bitcast(e.gep(e.acc, at), vec(F32, width).as_pointer())
                    bld.store(e.fadd(bld.load(ptr, align=4), tree), ptr, align=4)
                else:
                    bld.store(e.fadd(bld.load(e.gep(e.acc, at)), tree), e.gep(e.acc, at))

        chunks = bld.udiv(hd_v, ir.Constant(I64, DOT_LANES))
        with cgutils.for_range(bld, chunks) as loop:
            products(DOT_LANES, e.mul(loop.index, DOT_LANES), lambda row, j: _widen8(e, e.values, row, j, f16))
        with cgutils.for_range_slice(bld, e.mul(chunks, DOT_LANES), hd_v, ir.Constant(I64, 1)) as (j, _):
            products(1, j, lambda row, j: _widen1(e, e.values, bld.add(row, j), f16))
        return context.get_dummy_value()

    return sig, outlined("pv_accumulate_f16" if f16 else "pv_accumulate", codegen)
