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

These are the values and scales of the Q4_0 / Q8_0 twin with the zeros in place, and the
kernels take x as the dense ones do (8-bit codes per 32 values in decode, matvec.quantize_into_8),
so both give the same products up to float rounding.

    sparse_rows_q4 / _q8  decode, rows start..stop . x for a few x rows (a team job item,
                          jobs.SPARSE): explicit vector code where the CPU has AVX-512 VBMI, per
                          pair of blocks one multishift spreads the 64 position bits into bytes,
                          one vpermi2b (ymm) picks the 32 kept x codes out of the pair's 64,
                          and vpdpbusd multiplies them by the kept values; with AVX2 alone, vpsrlvd
                          and vpshufb do the same within 16-byte halves (_pair_lanes_avx2)
    rows_loop             the same as a plain numba loop, for every other CPU
    gemm_sparse_rows      prefill (jobs.SPARSE_GEMM): unpack_sparse puts a panel's rows back into
                          dense codes with the zero code in the pruned places (constant shuffles
                          and selects, no gathers) and the dense 16-bit GEMM (gemm.py) takes over
    dequantize            rows as float32 with the zeros in place
"""

from __future__ import annotations

import copy

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .floats import half_to_float
from .gemm import GROUP_ROWS, panel_scratch, panels_times_x, transpose_panel
from .jit import njit
from .simd import (
    NEON, X86, AVX2, CPU_FEATURES, F32, I8, I32, I64, ILANES, PREFETCH_BYTES, Emitter, declare, idot, idot_signed, outlined,
    vec,
)

HAS_VBMI = X86 and bool(CPU_FEATURES.get("avx512vbmi") and CPU_FEATURES.get("avx512vl"))
VECTOR_KERNEL = HAS_VBMI or AVX2 or NEON  # sparse_rows_q4/_q8 run here (else rows_loop)
if HAS_VBMI or AVX2:  # the JIT assembles the kernels' inline assembly (vpermi2b; AVX2's broadcast loads)
    llvm.initialize_native_asmparser()

I16 = ir.IntType(16)
SPARSE_ARGS = ("values", "index", "scales", "xq", "xd", "f16", "out", "start", "stop")
# A pair of blocks (2c, 2c + 1) in 32 byte slots, as vpdpbusd sums them 4 to an int32 lane:
# slot s holds kept entry s % 16 of block 2c + s // 16, so int32 lanes 0-3 are block 2c's and
# 4-7 block 2c + 1's. That is the order in which the values come out of their bytes with no
# shuffle: Q8's 32 bytes as they lie, Q4's 16 bytes loaded into both halves (a load, not a
# shuffle) and shifted by 0 or 4 (low nibbles block 2c, high ones 2c + 1).
_SLOT_BLOCK = [s // 16 for s in range(32)]
_SLOT_ENTRY = [s % 16 for s in range(32)]
_SLOT_POS_SHIFT = [32 * blk + 2 * k for blk, k in zip(_SLOT_BLOCK, _SLOT_ENTRY)]  # in the pair's 64 index bits
_SLOT_BASE = [32 * blk + 4 * (k // 2) for blk, k in zip(_SLOT_BLOCK, _SLOT_ENTRY)]  # group's first column
_LANE_SCALES = [0] * 4 + [1] * 4  # lane -> block of the pair (the scale it takes)
PAIRS_PER_STEP = 4  # pairs of blocks per loop step: one f16 conversion of 8 scales


def _pair_lanes(e, q8, c):
    """<8 x float>: the pair of blocks (2c, 2c + 1) of e's row . x before scaling, 4 kept
    products per lane, lanes 0-3 block 2c's, 4-7 block 2c + 1's."""
    b = e.b
    v32 = vec(I8, 32)
    # positions: the pair's two uint32 index words; each slot's 2 bits -> its byte, plus its base
    words = b.load(b.bitcast(e.gep(e.index, e.mul(c, 8)), I64.as_pointer()), align=1)
    spread = b.call(declare(b.module, "llvm.x86.avx512.pmultishift.qb.256", v32, [v32, v32]),
                    [e.const(I8, 32, _SLOT_POS_SHIFT), b.bitcast(e.splat(words, 4), v32)])
    cols = b.add(b.and_(spread, e.const(I8, 32, 3)), e.const(I8, 32, _SLOT_BASE))
    x0 = b.load(b.bitcast(e.gep(e.xq, e.mul(c, 64)), v32.as_pointer()), align=1)
    x1 = b.load(b.bitcast(e.gep(e.xq, e.add(e.mul(c, 64), 32)), v32.as_pointer()), align=1)
    # vpermi2b on ymm registers, as inline assembly: LLVM would fuse the two loads and the
    # permute into one zmm vpermb, and on Intel a 512-bit uop in flight takes port 1 from every
    # other vector instruction (the dots, the FMAs): 1.08-1.12x the dense rows -> 1.21-1.24x
    xs = b.asm(ir.FunctionType(v32, [v32, v32, v32]), "vpermi2b $3, $2, $0", "=v,0,v,v", [cols, x0, x1],
               False, "xs")
    # the kept values times their x codes, in the slots' order
    if q8:  # signed values: |w| against x with w's sign (vpsignb: one instruction, where a
        # compare-to-mask and a masked negate were two, one of them on the shuffle port)
        w = b.load(b.bitcast(e.gep(e.values, e.mul(c, 32)), v32.as_pointer()), align=1)
        u = b.call(declare(b.module, "llvm.abs.v32i8", v32, [v32, ir.IntType(1)]), [w, ir.Constant(ir.IntType(1), 0)])
        dots = idot(e, u, b.call(declare(b.module, "llvm.x86.avx2.psign.b", v32, [v32, v32]), [xs, w]))
    else:  # nibbles v, values v - 8: v . x - 8 . x, two independent dot instructions
        v = b.lshr(b.bitcast(_bytes_twice(e, e.gep(e.values, e.mul(c, 16))), vec(I64, 4)), e.const(I64, 4, [0, 0, 4, 4]))
        v = b.and_(b.bitcast(v, v32), e.const(I8, 32, 15))
        dots = b.sub(idot(e, v, xs), idot(e, e.const(I8, 32, 8), xs))
    return e.to_float(dots)


# AVX2 has byte shuffles only within 16-byte halves (vpshufb) and no per-byte shifts, so a pair
# takes its own slot order: half h of the 32 slots holds entries 8h..8h+7 of both blocks, int32
# lane j of the half 4 entries of block 2c + j % 2 (lanes alternate blocks, as with VBMI): with
# m = 2 (j // 2), entries m, m + 4, m + 1, m + 5 (+ 8h). That order is what shifts give: the
# lane's two index bytes (entries 8h..8h+7 of its block) twice, shifted by 2m and by 2m + 2,
# have entries m, m + 4 in the low bits of bytes 0, 1 of the first and m + 1, m + 5 in bytes
# 2, 3 of the second, and one 16-bit blend joins them.
_AVX2_SLOT_BLOCK = [(t // 4) % 2 for t in range(32)]
_AVX2_SLOT_ENTRY = [8 * (t // 16) + 2 * ((t % 16) // 8) + [0, 4, 1, 5][t % 4] for t in range(32)]
_AVX2_WORD_BYTES = [4 * blk + 2 * (t // 16) + t % 2 for t, blk in enumerate(_AVX2_SLOT_BLOCK)]
_AVX2_SHIFTS = [4 * ((j % 4) // 2) for j in range(8)]  # per lane: 2m (+ 2 for its second half)
_AVX2_SLOT_BASE = [4 * ((k % 8) // 2) for k in _AVX2_SLOT_ENTRY]  # group's first column in the half
_AVX2_Q4_SHIFTS = [4 * ((j % 4) % 2) for j in range(8)]  # block 2c + 1's values: the high nibbles
_AVX2_BLOCK1_LANES = [j % 2 for j in range(8)]


def _pshufb(e, table, idx):
    v32 = vec(I8, 32)
    return e.b.call(declare(e.b.module, "llvm.x86.avx2.pshuf.b", v32, [v32, v32]), [table, idx])


def _bytes_twice(e, ptr):
    """<32 x i8>: the 16 bytes at ptr in both halves."""
    b = e.b
    raw = b.load(b.bitcast(ptr, vec(I8, 16).as_pointer()), align=1)
    return b.shuffle_vector(raw, raw, e.const(I32, 32, list(range(16)) * 2))


_BROADCASTS = {8: "vpbroadcastq ($1), $0", 16: "vbroadcasti128 ($1), $0"}


def _broadcast_load(e, ptr, nbytes):
    """<32 x i8>: the 8 or 16 bytes at ptr repeated, loaded with a broadcast (vpbroadcastq /
    vbroadcasti128 from memory: the load port alone). Inline assembly: LLVM merges a load and
    repeat with the vpshufb after it into vpermq + vpshufb, and the shuffle port is the one the
    AVX2 kernel runs short of."""
    i8p = ir.IntType(8).as_pointer()
    return e.b.asm(ir.FunctionType(vec(I8, 32), [i8p]), _BROADCASTS[nbytes], "=x,r", [e.b.bitcast(ptr, i8p)],
                   False, "broadcast")


def _pair_lanes_avx2(e, q8, c):
    """_pair_lanes for AVX2 (its own slot order, the same lanes)."""
    b = e.b
    v32, v8 = vec(I8, 32), vec(I32, 8)
    words = _broadcast_load(e, e.gep(e.index, e.mul(c, 8)), 8)  # the pair's two uint32 index words
    twice = b.bitcast(_pshufb(e, words, e.const(I8, 32, _AVX2_WORD_BYTES)), v8)
    first = b.lshr(twice, e.const(I32, 8, _AVX2_SHIFTS))
    second = b.lshr(twice, e.const(I32, 8, [s + 2 for s in _AVX2_SHIFTS]))
    # bytes 0, 1 of each lane from first, 2, 3 from second, each byte's low 2 bits: masks rather
    # than a 16-bit blend, which takes the shuffle port
    joined = b.or_(b.and_(first, e.const(I32, 8, 0x0303)), b.and_(second, e.const(I32, 8, 0x03030000)))
    cols = b.or_(b.bitcast(joined, v32), e.const(I8, 32, _AVX2_SLOT_BASE))
    block1 = b.icmp_unsigned("!=", e.const(I32, 8, _AVX2_BLOCK1_LANES), e.const(I32, 8, 0))

    def blocks_picked(x0, x1, idx):  # lanes of block 2c from x0, of 2c + 1 from x1
        picked = [b.bitcast(_pshufb(e, x, idx), v8) for x in (x0, x1)]
        return b.bitcast(b.select(block1, picked[1], picked[0]), v32)

    x = [b.load(b.bitcast(e.gep(e.xq, b.add(e.mul(c, 64), ir.Constant(I64, 32 * k))), v32.as_pointer()), align=1)
         for k in range(2)]
    xs = blocks_picked(x[0], x[1], cols)
    slot_value = e.const(I8, 32, _AVX2_SLOT_ENTRY)  # the byte of a block's 16 values (Q8), of a pair's (Q4)
    if q8:
        base = e.mul(c, 32)
        w = blocks_picked(_broadcast_load(e, e.gep(e.values, base), 16),
                          _broadcast_load(e, e.gep(e.values, e.add(base, 16)), 16), slot_value)
    else:  # nibbles v, values v - 8
        both = b.bitcast(_pshufb(e, _broadcast_load(e, e.gep(e.values, e.mul(c, 16)), 16), slot_value), v8)
        v = b.and_(b.bitcast(b.lshr(both, e.const(I32, 8, _AVX2_Q4_SHIFTS)), v32), e.const(I8, 32, 15))
        w = b.sub(v, e.const(I8, 32, 8))
    return e.to_float(idot_signed(e, w, xs))


def _pair_lanes_neon(e, q8, c):
    """_pair_lanes for ARM (VBMI's slot order): each slot's index byte picked out of the pair's
    8 (a constant shuffle: tbl), shifted by its own count (ushl) and masked; the x codes looked
    up in the pair's 64 (tbl with four registers, 16 slots at a time); the kept values as they
    lie (Q8) or as nibbles - 8 (Q4), against them with signed byte dots (sdot, or its generic
    form)."""
    b = e.b
    v16 = vec(I8, 16)
    words = b.load(b.bitcast(e.gep(e.index, e.mul(c, 8)), vec(I8, 8).as_pointer()), align=1)
    spread = b.shuffle_vector(words, words, e.const(I32, 32, [shift // 8 for shift in _SLOT_POS_SHIFT]))
    pos = b.and_(b.lshr(spread, e.const(I8, 32, [shift % 8 for shift in _SLOT_POS_SHIFT])), e.const(I8, 32, 3))
    cols = b.or_(pos, e.const(I8, 32, _SLOT_BASE))  # the bases' low 2 bits are 0
    x = e.gep(e.xq, e.mul(c, 64))
    table = [b.load(b.bitcast(e.gep(x, 16 * i), v16.as_pointer()), align=1) for i in range(4)]
    tbl4 = declare(b.module, "llvm.aarch64.neon.tbl4.v16i8", v16, [v16] * 5)
    xs = [b.call(tbl4, table + [half]) for half in e.halves(cols)]
    xs = b.shuffle_vector(xs[0], xs[1], e.const(I32, 32, list(range(32))))
    if q8:
        w = b.load(b.bitcast(e.gep(e.values, e.mul(c, 32)), vec(I8, 32).as_pointer()), align=1)
    else:  # low nibbles block 2c's entries, high ones block 2c + 1's
        raw = b.load(b.bitcast(e.gep(e.values, e.mul(c, 16)), v16.as_pointer()), align=1)
        nibbles = b.shuffle_vector(b.and_(raw, e.const(I8, 16, 15)), b.lshr(raw, e.const(I8, 16, 4)),
                                   e.const(I32, 32, list(range(32))))
        w = b.sub(nibbles, e.const(I8, 32, 8))
    return e.to_float(idot_signed(e, w, xs))


def _block_scales(e, first, n):
    """<n x float>: d * xd of blocks first..first + n - 1 (d: f16, converted by the CPU)."""
    b = e.b
    d = b.fpext(b.load(b.bitcast(e.gep(b.bitcast(e.scales, I16.as_pointer()), first),
                                 vec(ir.HalfType(), n).as_pointer()), align=2), vec(F32, n))
    xd = b.load(b.bitcast(e.gep(e.xd, first), vec(F32, n).as_pointer()), align=4)
    return e.fmul(d, xd)


def _add_pair(e, q8, acc, scales, k, c):
    """acc += pair c's lanes times its scales, entries 2k and 2k + 1 of scales (one permute)."""
    b = e.b
    if HAS_VBMI:
        lanes, blocks = _pair_lanes(e, q8, c), _LANE_SCALES
    elif NEON:  # tbl: a byte lookup in 64 bytes
        lanes, blocks = _pair_lanes_neon(e, q8, c), _LANE_SCALES
    else:
        lanes, blocks = _pair_lanes_avx2(e, q8, c), _AVX2_BLOCK1_LANES
    spread = b.shuffle_vector(scales, scales, e.const(I32, ILANES, [2 * k + blk for blk in blocks]))
    b.store(e.fma(spread, lanes, b.load(acc)), acc)


def _row_dot(e, q8, n_cols):
    """e's row . x: four pairs of blocks per step (their 8 scales converted at once, two
    accumulators), then the last 0-3 pairs two at a time and one."""
    b = e.b
    accs = [cgutils.alloca_once_value(b, e.const(F32, ILANES, 0.0)) for _ in range(2)]
    n_pairs = b.udiv(n_cols, ir.Constant(I64, 64))
    n_steps = b.udiv(n_pairs, ir.Constant(I64, PAIRS_PER_STEP))
    with cgutils.for_range(b, n_steps) as loop:
        c = e.mul(loop.index, PAIRS_PER_STEP)
        # three streams (values, index, scales), each asking for its bytes ahead: without the
        # prefetches a llama-shaped Q4 decode ran 1.17x the dense one, with all three 1.25x
        for line in range(2 if q8 else 1):  # a step reads 128 (Q8) or 64 bytes of values
            e.prefetch_at(e.gep(e.values, e.add(e.mul(c, 32 if q8 else 16), PREFETCH_BYTES + 64 * line)))
        e.prefetch_at(e.gep(e.index, e.add(e.mul(c, 8), PREFETCH_BYTES // 2)))
        e.prefetch_at(e.gep(b.bitcast(e.scales, I8.as_pointer()), e.add(e.mul(c, 4), PREFETCH_BYTES // 4)))
        scales = _block_scales(e, e.mul(c, 2), 2 * PAIRS_PER_STEP)
        for k in range(PAIRS_PER_STEP):
            _add_pair(e, q8, accs[k % 2], scales, k, e.add(c, k))
    first = e.mul(n_steps, PAIRS_PER_STEP)
    left = b.sub(n_pairs, first)
    with cgutils.for_range(b, b.udiv(left, ir.Constant(I64, 2))) as loop:  # two at a time, then one
        c = b.add(first, e.mul(loop.index, 2))
        scales = _block_scales(e, e.mul(c, 2), 4)
        for k in range(2):
            _add_pair(e, q8, accs[k], scales, k, e.add(c, k))
    with b.if_then(b.icmp_unsigned("!=", b.urem(left, ir.Constant(I64, 2)), ir.Constant(I64, 0))):
        c = b.sub(n_pairs, ir.Constant(I64, 1))
        _add_pair(e, q8, accs[0], _block_scales(e, e.mul(c, 2), 2), 0, c)
    return e.reduce(e.fadd(b.load(accs[0]), b.load(accs[1])))


def _sparse_rows(q8):
    def generic(typingctx, values, index, scales, xq, xd, f16, out, start, stop):
        sig = types.void(values, index, scales, xq, xd, f16, out, start, stop)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, SPARSE_ARGS)
            b = builder
            rows, n_cols = e.shape(6, 1), e.shape(3, 1)
            n = e.shape(3, 0)
            vbytes, ibytes, sblocks = e.shape(0, 1), e.shape(1, 1), e.shape(2, 1)
            blocks = b.udiv(n_cols, ir.Constant(I64, 32))
            with cgutils.for_range_slice(b, e.start, e.stop, ir.Constant(I64, 1)) as (r, _):
                row = copy.copy(e)
                row.values = e.gep(e.values, b.mul(r, vbytes))
                row.index = e.gep(e.index, b.mul(r, ibytes))
                row.scales = e.gep(e.scales, b.mul(r, sblocks))
                with cgutils.for_range(b, n) as xrow:
                    k = xrow.index
                    one = copy.copy(row)
                    one.xq = e.gep(e.xq, b.mul(k, n_cols))
                    one.xd = e.gep(e.xd, b.mul(k, blocks))
                    b.store(_row_dot(one, q8, n_cols), e.gep(e.out, b.add(b.mul(k, rows), r)))

        return sig, outlined("sparse_rows_q8" if q8 else "sparse_rows_q4", codegen)

    return intrinsic(generic)


sparse_rows_q4 = _sparse_rows(False)
sparse_rows_q8 = _sparse_rows(True)


# --- the portable loops ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _value(values, blk, k, q8):
    """Kept value k of block blk as a signed integer: Q8 values are int8 (their bytes, whatever
    the array's dtype), Q4 nibbles - 8."""
    if q8:
        return np.int32(np.int8(values[16 * blk + k]))
    return ((np.int32(values[16 * (blk // 2) + k]) >> (4 * (blk % 2))) & 15) - 8


@njit(cache=True, inline="always")
def _column(index, blk, k):
    """Column (in the row) of kept value k of block blk."""
    return 32 * blk + 4 * (k // 2) + ((np.int32(index[4 * blk + k // 4]) >> (2 * (k % 4))) & 3)


@njit(cache=True, nogil=True)
def rows_loop(values, index, scales, xq, xd, out, start, stop, q8):
    """out[k, r] = row r . x[k] for rows start..stop, x as 8-bit codes xq [n, n_cols] with a
    scale per 32 (xd): the integer dot per block, then d * xd once per block."""
    for r in range(start, stop):
        for k in range(xq.shape[0]):
            acc = np.float32(0.0)
            for blk in range(scales.shape[1]):
                dot = 0
                for e in range(16):
                    dot += _value(values[r], blk, e, q8) * np.int32(xq[k, _column(index[r], blk, e)])
                acc += half_to_float(np.int32(scales[r, blk])) * xd[k, blk] * np.float32(dot)
            out[k, r] = acc


@njit(cache=True, nogil=True, inline="always")
def sparse_rows(values, index, scales, xq, xd, f16, out, start, stop, q8):
    """A jobs.SPARSE work item: the vector rows where the CPU runs them, else the loop."""
    if VECTOR_KERNEL:
        if q8:
            sparse_rows_q8(values, index, scales, xq, xd, f16, out, start, stop)
        else:
            sparse_rows_q4(values, index, scales, xq, xd, f16, out, start, stop)
    else:
        rows_loop(values, index, scales, xq, xd, out, start, stop, q8)


# --- prefill: panels of dense codes for the GEMM -----------------------------------------------------
# Dense column j of a block: group g = j // 4 keeps entries 2g and 2g + 1, at positions p0 < p1.
_EVEN = [2 * (j // 4) for j in range(32)]
_OFFSET = [j % 4 for j in range(32)]


def _dense_codes(e, kept, word, zero):
    """<32 x i8>: a block's 32 codes in column order from its 16 kept codes (<16 x i8>, entry
    order) and its index word (i32): kept entry k where its position puts it, zero elsewhere."""
    b = e.b
    pos = b.trunc(b.and_(b.lshr(e.splat(word, 16), e.const(I32, 16, [2 * k for k in range(16)])),
                         e.const(I32, 16, 3)), vec(I8, 16))
    offset = e.const(I8, 32, _OFFSET)
    out = e.const(I8, 32, zero)
    for first in (1, 0):  # the second kept entry, then the first one over it
        mask = e.const(I32, 32, [k + first for k in _EVEN])
        hit = b.icmp_unsigned("==", b.shuffle_vector(pos, pos, mask), offset)
        out = b.select(hit, b.shuffle_vector(kept, kept, mask), out)
    return out


def _unpack_sparse(q8):
    """unpack_sparse_q4 / _q8(values, index, scales, r0, f16, codes, fields): rows r0.. of the
    compact planes into gemm's codes and fields buffers, as gemm.unpack_<type> does for the
    twin (Q4: codes v with offset -8 d, the pruned ones 8; Q8: w + 128 with offset -128 d, the
    pruned ones 128)."""
    names = ("values", "index", "scales", "r0", "f16", "codes", "fields")

    def generic(typingctx, values, index, scales, r0, f16, codes, fields):
        sig = types.void(values, index, scales, r0, f16, codes, fields)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, names)
            b = builder
            rows, n_cols = e.shape(1, 0), e.shape(5, 1)
            blocks = b.udiv(n_cols, ir.Constant(I64, 32))
            last = b.sub(rows, ir.Constant(I64, 1))
            zero = 128 if q8 else 8
            with cgutils.for_range(b, ir.Constant(I64, GROUP_ROWS)) as row_loop:
                r = row_loop.index
                src = b.add(e.r0, r)
                src = b.select(b.icmp_signed(">", src, last), last, src)
                values_row = e.gep(e.values, b.mul(src, e.shape(0, 1)))
                index_row = e.gep(e.index, b.mul(src, e.shape(1, 1)))
                scales_row = e.gep(b.bitcast(e.scales, I16.as_pointer()), b.mul(src, e.shape(2, 1)))
                with cgutils.for_range(b, blocks) as block_loop:
                    blk = block_loop.index
                    if q8:
                        raw = b.load(b.bitcast(e.gep(values_row, e.mul(blk, 16)), vec(I8, 16).as_pointer()), align=1)
                        kept = b.xor(raw, e.const(I8, 16, -128))
                    else:
                        raw = b.load(b.bitcast(e.gep(values_row, e.mul(b.udiv(blk, ir.Constant(I64, 2)), 16)),
                                               vec(I8, 16).as_pointer()), align=1)
                        shift = b.trunc(b.mul(b.urem(blk, ir.Constant(I64, 2)), ir.Constant(I64, 4)), I8)
                        kept = b.and_(b.lshr(raw, e.splat(shift, 16)), e.const(I8, 16, 15))
                    word = b.load(b.bitcast(e.gep(index_row, e.mul(blk, 4)), I32.as_pointer()), align=1)
                    dst = e.gep(e.codes, b.add(b.mul(r, n_cols), e.mul(blk, 32)))
                    b.store(_dense_codes(e, kept, word, zero), b.bitcast(dst, vec(I8, 32).as_pointer()), align=1)
                    d = b.load(e.gep(e.f16, b.zext(b.load(e.gep(scales_row, blk), align=2), I64)))
                    for k, value in enumerate((d, d, e.fmul(d, ir.Constant(F32, -float(zero))), ir.Constant(F32, 0.0))):
                        at = b.add(b.mul(b.add(b.mul(ir.Constant(I64, k), blocks), blk), ir.Constant(I64, GROUP_ROWS)), r)
                        b.store(value, e.gep(e.fields, at))

        return sig, outlined("unpack_sparse_q8" if q8 else "unpack_sparse_q4", codegen)

    return intrinsic(generic)


unpack_sparse_q4 = _unpack_sparse(False)
unpack_sparse_q8 = _unpack_sparse(True)


@njit(cache=True, nogil=True, inline="always")
def gemm_sparse_rows(values, index, scales, xq, xd, xs32, xs16, f16, out, start, stop, q8):
    """out[:, start:stop] = x @ W[start:stop].T for x quantized to 16 bits (gemm.gemm_rows for
    the compact planes); start a multiple of gemm.GROUP_ROWS. One work item of jobs.SPARSE_GEMM."""
    panels, codes, fields = panel_scratch(stop - start, xq.shape[1])
    for p in range(panels.shape[0]):
        if q8:
            unpack_sparse_q8(values, index, scales, start + GROUP_ROWS * p, f16, codes, fields)
        else:
            unpack_sparse_q4(values, index, scales, start + GROUP_ROWS * p, f16, codes, fields)
        transpose_panel(codes, fields, panels[p])
    panels_times_x(panels, start, index.shape[0], xq, xd, xs32, xs16, out, False)


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
                row[_column(index[r], blk, k)] = d * np.float32(_value(values[r], blk, k, q8))
