"""Prefill: out = x @ W.T for many x rows, W quantized, in 16-bit integer arithmetic.

x is quantized once to 16 bits per value with a scale per 32 (matvec.quantize_x16: an error of
~1e-5 of each block's largest value, where 8 bits, as in decode, would move the bundled Gemma's
teacher-forced perplexity by a percent: the model amplifies rounding). W's blocks are unpacked
into codes, scales and offsets by the same per-type code as the decode row dots
(simd.QUANT_TYPES). What differs is the arrangement: a decode row dot puts products of one row
in each int32 lane; here a lane is one output, so that the float work (convert, scale, add) is
paid once per 8 outputs and 32 values, not once per output and 32 values.

For a group of 8 rows, a panel (scratch, in L1/L2) holds, per 32 values v of a row:

    16 vectors of 32 bytes, vector j = [row 0's codes 2j, 2j+1 as int16, row 1's, ..., row 7's]
    the rows' scales, scales of values 16-31 (Q6_K), offsets, offsets of values 16-31: 4 x 8 floats

built once per group: for the legacy types straight from their 8-row chunks (interleave.py:
each chunk vector is 8 rows x 4 codes, widened it is two panel vectors), for the K-quants
unpacked row by row, widened, then transposes of 32-bit words. Then for every
token and every 32 values, 16 dot-product instructions (VNNI vpdpwssd: 2 int16 x int16 products
per lane, the token's 2 codes broadcast to all 8 lanes) give the 8 rows' integer dots, and

    out[token, rows] += scales * xd[token, v] * float(dots) + offsets * xs32[token, v]

Tokens go 8 at a time (8 independent accumulators; the panel vectors are loaded once for the 8),
then one at a time for the rest. unpack_<type> (the only per-type code) and transpose_panel
(panel_<type> for the legacy types) build a panel, and panel_times_x multiplies one by a range
of tokens.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import interleave
from .interleave import LAYOUTS, ROWS
from .jit import njit
from .matvec import Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from .simd import (
    F32, I8, I16, I32, I64, QUANT_TYPES, SPLIT_PAIRS, VNNI_512, Emitter, idot16, outlined, vec,
)

# Rows per panel: the int32 lanes of one dot instruction, 16 with AVX-512 VNNI (on CPUs that
# run 512-bit vectors at full width that doubles the work per instruction; elsewhere it halves
# the instructions that feed them), else 8.
GROUP_ROWS = 16 if VNNI_512 else 8
TOKENS = 8  # tokens per step of the main loop
CODE_VECTORS = 16  # per 32 values: 16 vectors of GROUP_ROWS rows x 2 int16 codes
VECTOR_BYTES = 4 * GROUP_ROWS
PANEL_SUB_BYTES = (CODE_VECTORS + 4) * VECTOR_BYTES  # and 4 vectors of GROUP_ROWS floats
FIELDS_AT = CODE_VECTORS * VECTOR_BYTES


def _transpose(e, w):
    """R <R x i32> rows -> R vectors, vector j holding word j of each row in row order: log2(R)
    rounds of two-input shuffles, round s swapping s x s blocks between rows i and i + s."""
    b = e.b
    n = len(w)
    s = 1
    while s < n:
        lo_mask = [l if (l // s) % 2 == 0 else n + l - s for l in range(n)]
        hi_mask = [l + s if (l // s) % 2 == 0 else n + l for l in range(n)]
        new = list(w)
        for start in range(0, n, 2 * s):
            for i in range(start, start + s):
                new[i] = b.shuffle_vector(w[i], w[i + s], e.const(I32, n, lo_mask))
                new[i + s] = b.shuffle_vector(w[i], w[i + s], e.const(I32, n, hi_mask))
        w, s = new, 2 * s
    return w


def _code_vectors(e, codes):
    """The 16 panel vectors of GROUP_ROWS rows' <32 x i8> unsigned codes: widened to int16,
    vector j is word j (codes 2j, 2j + 1) of every row."""
    b = e.b
    words = [b.bitcast(b.zext(u, vec(I16, 32)), vec(I32, 16)) for u in codes]
    out = []
    for first in range(0, 16, GROUP_ROWS):  # 16 words per row, GROUP_ROWS at a time
        part = list(range(first, first + GROUP_ROWS))
        out += _transpose(e, [b.shuffle_vector(w, w, e.const(I32, GROUP_ROWS, part)) for w in words])
    return [_split_pairs(e, v) for v in out]


def _split_pairs(e, v):
    """A panel vector as idot16 takes it: as it is on x86; elsewhere (SPLIT_PAIRS) its lanes'
    first codes, then their second codes."""
    if not SPLIT_PAIRS:
        return v
    b = e.b
    split = list(range(0, 2 * GROUP_ROWS, 2)) + list(range(1, 2 * GROUP_ROWS, 2))
    v16 = b.bitcast(v, vec(I16, 2 * GROUP_ROWS))
    return b.bitcast(b.shuffle_vector(v16, v16, e.const(I32, 2 * GROUP_ROWS, split)), vec(I32, GROUP_ROWS))


def _rows_side_by_side(e, parts):
    """GROUP_ROWS lanes from ROWS-lane vectors of consecutive groups."""
    if len(parts) == 1:
        return parts[0]
    return e.b.shuffle_vector(parts[0], parts[1], e.const(I32, GROUP_ROWS, list(range(GROUP_ROWS))))


def _panel_from_chunks(e, lay, n_subs):
    """The panel of rows r0..r0 + GROUP_ROWS of a repacked weight (interleave.py), block by
    block from its chunks: each chunk vector (8 rows x codes v0..v0+3) widened to int16 is
    words (v0, v0+1) and (v0+2, v0+3) of each row: panel vectors v0 / 2 and v0 / 2 + 1. The
    codes and fields are those the row-by-row unpacking made (simd.Sub): Q8_0's codes w + 128
    with offset -128 d."""
    b = e.b
    row_bytes = e.shape(0, 1)
    first = b.udiv(e.r0, ir.Constant(I64, ROWS))
    groups = [e.gep(e.data, b.mul(b.add(first, ir.Constant(I64, i)), e.mul(row_bytes, ROWS)))
              for i in range(GROUP_ROWS // ROWS)]
    zeros = e.const(F32, GROUP_ROWS, 0.0)
    with cgutils.for_range(b, n_subs) as loop:
        v = loop.index
        codes, scales, offsets = [], [], []
        for group in groups:
            chunk = e.gep(group, e.mul(v, lay.chunk_bytes))
            chunk_codes = interleave.code_vectors(e, lay, chunk)
            d, off = interleave.fields(e, lay, chunk)
            if lay.vectors == 8:  # Q8_0's signed w as the unsigned w + 128
                chunk_codes = [(v0, b.xor(w, e.const(I8, 32, -128))) for v0, w in chunk_codes]
                off = e.fmul(d, e.const(F32, ROWS, -128.0))
            codes.append(chunk_codes)
            scales.append(d)
            offsets.append(off)
        for i, (v0, _) in enumerate(codes[0]):
            words = [b.bitcast(b.zext(group_codes[i][1], vec(I16, 32)), vec(I32, 16)) for group_codes in codes]
            for half in range(2):  # even words: codes v0, v0 + 1 of each row; odd: v0 + 2, v0 + 3
                lanes = [b.shuffle_vector(w, w, e.const(I32, ROWS, list(range(half, 16, 2)))) for w in words]
                panel_vector = _split_pairs(e, _rows_side_by_side(e, lanes))
                b.store(panel_vector, _panel_ptr(e, v, VECTOR_BYTES * (v0 // 2 + half), vec(I32, GROUP_ROWS)), align=4)
        scale = _rows_side_by_side(e, scales)
        for k, value in enumerate((scale, scale, _rows_side_by_side(e, offsets), zeros)):
            b.store(value, _panel_ptr(e, v, FIELDS_AT + VECTOR_BYTES * k, vec(F32, GROUP_ROWS)), align=4)


def _panel_ptr(e, sub, offset, t):
    """Pointer (to t) at panel + sub * PANEL_SUB_BYTES + offset."""
    p = e.gep(e.gep(e.panel, e.mul(sub, PANEL_SUB_BYTES)), offset)
    return e.b.bitcast(p, t.as_pointer())


def _unpack_rows(e, qt, rows, row_bytes, n_subs):
    """Rows r0..r0 + GROUP_ROWS - 1 of data (the last row repeated past the end of W) into
    codes (uint8 [GROUP_ROWS, n_cols]: each row's unsigned codes) and fields (float32
    [4, n_subs, GROUP_ROWS]: scale, scale of values 16-31, offset, offset of values 16-31)."""
    b = e.b
    zero = ir.Constant(F32, 0.0)
    last = b.sub(rows, ir.Constant(I64, 1))
    per_block = qt.block_values // 32
    n_cols = b.mul(n_subs, ir.Constant(I64, 32))
    with cgutils.for_range(b, ir.Constant(I64, GROUP_ROWS)) as row_loop:
        r = row_loop.index
        index = b.add(e.r0, r)
        index = b.select(b.icmp_signed(">", index, last), last, index)
        view = e.at_row(e.gep(e.data, b.mul(index, row_bytes)))
        with cgutils.for_range(b, b.udiv(n_subs, ir.Constant(I64, per_block))) as blocks:
            for i, sub in enumerate(qt.subs(view, e.mul(blocks.index, qt.block_bytes))):
                v = e.add(e.mul(blocks.index, per_block), i)
                dst = e.gep(e.codes, b.add(b.mul(r, n_cols), e.mul(v, 32)))
                b.store(sub.u, b.bitcast(dst, vec(I8, 32).as_pointer()), align=1)
                fields = (sub.scale, sub.scale_hi if sub.scale_hi is not None else sub.scale,
                          sub.off if sub.off is not None else zero, sub.off_hi if sub.off_hi is not None else zero)
                for k, value in enumerate(fields):
                    at = b.add(b.mul(b.add(b.mul(ir.Constant(I64, k), n_subs), v), ir.Constant(I64, GROUP_ROWS)), r)
                    b.store(value, e.gep(e.fields, at))


def _transpose_panel(e, n_subs):
    """The panel (see the module docstring) from unpack's codes and fields."""
    b = e.b
    n_cols = b.mul(n_subs, ir.Constant(I64, 32))
    with cgutils.for_range(b, n_subs) as loop:
        v = loop.index
        codes = [b.load(b.bitcast(e.gep(e.codes, b.add(e.mul(n_cols, r), e.mul(v, 32))), vec(I8, 32).as_pointer()),
                        align=1) for r in range(GROUP_ROWS)]
        for j, words in enumerate(_code_vectors(e, codes)):
            b.store(words, _panel_ptr(e, v, VECTOR_BYTES * j, vec(I32, GROUP_ROWS)), align=4)
        for k in range(4):
            src = e.gep(e.fields, b.mul(b.add(b.mul(ir.Constant(I64, k), n_subs), v), ir.Constant(I64, GROUP_ROWS)))
            values = b.load(b.bitcast(src, vec(F32, GROUP_ROWS).as_pointer()), align=4)
            b.store(values, _panel_ptr(e, v, FIELDS_AT + VECTOR_BYTES * k, vec(F32, GROUP_ROWS)), align=4)


def _splat_pair(e, ptr):
    """The i32 at ptr (2 int16 codes) broadcast to GROUP_ROWS lanes."""
    word = e.b.load(e.b.bitcast(ptr, I32.as_pointer()), align=2)
    return e.splat(word, GROUP_ROWS)


def _chain(e, codes, words, js):
    acc = e.const(I32, GROUP_ROWS, 0)
    for j in js:
        acc = idot16(e, codes[j], words[j], acc)
    return acc


def _tokens(e, halves, c0, count, n_subs, n_cols, rows):
    """out[c0 + k, r0:r0 + GROUP_ROWS] for k < count (a compile-time count), over all n_subs."""
    b = e.b
    lanes = GROUP_ROWS
    accs = [cgutils.alloca_once_value(b, e.const(F32, lanes, 0.0)) for _ in range(count)]
    per_row32, per_row16 = b.udiv(n_cols, ir.Constant(I64, 32)), b.udiv(n_cols, ir.Constant(I64, 16))
    with cgutils.for_range(b, n_subs) as loop:
        v = loop.index
        codes = [b.load(_panel_ptr(e, v, VECTOR_BYTES * j, vec(I32, lanes)), align=4) for j in range(CODE_VECTORS)]
        scale, scale_hi, off, off_hi = (b.load(_panel_ptr(e, v, FIELDS_AT + VECTOR_BYTES * k, vec(F32, lanes)), align=4)
                                        for k in range(4))
        for k in range(count):
            c = b.add(c0, ir.Constant(I64, k))
            x = e.gep(e.xq, b.add(b.mul(c, n_cols), e.mul(v, 32)))  # this token's 32 codes (int16)
            words = [_splat_pair(e, e.gep(x, 2 * j)) for j in range(CODE_VECTORS)]
            acc = b.load(accs[k])
            s32 = b.add(b.mul(c, per_row32), v)
            xd = e.splat(e.scalar(e.xd, s32), lanes)
            if halves:  # values 0-15 (code vectors 0-7) and 16-31 have their own scales
                lo, hi = _chain(e, codes, words, range(8)), _chain(e, codes, words, range(8, 16))
                acc = e.fma(e.fmul(scale, xd), e.to_float(lo), acc)
                acc = e.fma(e.fmul(scale_hi, xd), e.to_float(hi), acc)
                s16 = b.add(b.mul(c, per_row16), e.mul(v, 2))
                acc = e.fma(off, e.splat(e.scalar(e.xs16, s16), lanes), acc)
                acc = e.fma(off_hi, e.splat(e.scalar(e.xs16, e.add(s16, 1)), lanes), acc)
            else:  # two chains of eight dot instructions, then one sum
                dots = b.add(_chain(e, codes, words, range(0, 16, 2)), _chain(e, codes, words, range(1, 16, 2)))
                acc = e.fma(e.fmul(scale, xd), e.to_float(dots), acc)
                acc = e.fma(off, e.splat(e.scalar(e.xs32, s32), lanes), acc)
            b.store(acc, accs[k])
    valid = b.sub(rows, e.r0)
    for k in range(count):
        c = b.add(c0, ir.Constant(I64, k))
        e.store_first(b.load(accs[k]), e.gep(e.out, b.add(b.mul(c, rows), e.r0)), valid)


def _unpack(qt):
    """unpack_<type>(data, r0, f16, codes, fields): _unpack_rows for this type (outlined, and
    kept apart from the transpose: together, LLVM's instruction combiner spent seconds folding
    Q5_K's and Q6_K's bit fields through the transpose on a first run)."""

    def generic(typingctx, data, r0, f16, codes, fields):
        sig = types.void(data, r0, f16, codes, fields)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, ("data", "r0", "f16", "codes", "fields"))
            n_subs = builder.udiv(e.shape(3, 1), ir.Constant(I64, 32))
            _unpack_rows(e, qt, e.shape(0, 0), e.shape(0, 1), n_subs)

        return sig, outlined(f"unpack_{qt.name}", codegen)

    return intrinsic(generic)


def _panel_x8(lay):
    """panel_<type>(data, r0, panel): the panel of rows r0..r0 + GROUP_ROWS (r0 a multiple of
    GROUP_ROWS) of a repacked weight data uint8 [rows, row_bytes] (interleave.py; its padding
    rows read as they are: zeros)."""

    def generic(typingctx, data, r0, panel):
        sig = types.void(data, r0, panel)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args, ("data", "r0", "panel"))
            n_subs = builder.udiv(e.shape(0, 1), ir.Constant(I64, lay.block_bytes))
            _panel_from_chunks(e, lay, n_subs)

        return sig, outlined(f"panel_{lay.name}", codegen)

    return intrinsic(generic)


@intrinsic
def transpose_panel(typingctx, codes, fields, panel):
    """transpose_panel(codes, fields, panel): a panel from unpack_<type>'s buffers."""
    sig = types.void(codes, fields, panel)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args, ("codes", "fields", "panel"))
        _transpose_panel(e, builder.udiv(e.shape(0, 1), ir.Constant(I64, 32)))

    return sig, outlined("transpose_panel", codegen)


def _panel_times_x(halves):
    """panel_times_x(panel, r0, rows, xq, xd, xs32, xs16, out, c0, c1): out[c0:c1, r0:r0 + 8]
    (fewer columns at the end of out's rows) from a panel and x quantized to 16 bits."""

    def generic(typingctx, panel, r0, rows, xq, xd, xs32, xs16, out, c0, c1):
        sig = types.void(panel, r0, rows, xq, xd, xs32, xs16, out, c0, c1)

        def codegen(context, builder, signature, args):
            names = ("panel", "r0", "rows", "xq", "xd", "xs32", "xs16", "out", "c0", "c1")
            e = Emitter(context, builder, signature, args, names)
            n_cols = e.shape(3, 1)
            n_subs = builder.udiv(n_cols, ir.Constant(I64, 32))
            count = builder.sub(e.c1, e.c0)
            with cgutils.for_range(builder, builder.udiv(count, ir.Constant(I64, TOKENS))) as loop:
                _tokens(e, halves, builder.add(e.c0, e.mul(loop.index, TOKENS)), TOKENS, n_subs, n_cols, e.rows)
            done = builder.add(e.c0, e.mul(builder.udiv(count, ir.Constant(I64, TOKENS)), TOKENS))
            with cgutils.for_range(builder, builder.sub(e.c1, done)) as loop:
                _tokens(e, halves, builder.add(done, loop.index), 1, n_subs, n_cols, e.rows)

        return sig, outlined("panel_times_x_halves" if halves else "panel_times_x", codegen)

    return intrinsic(generic)


unpack_q4_k, unpack_q5_k, unpack_q6_k = (_unpack(QUANT_TYPES[name]) for name in ("q4_k", "q5_k", "q6_k"))
panel_q4_0, panel_q4_1, panel_q5_0, panel_q5_1, panel_q8_0 = (
    _panel_x8(LAYOUTS[t]) for t in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0))
panel_times_x = _panel_times_x(False)
panel_times_x_halves = _panel_times_x(True)  # Q6_K: a scale per 16 values

# Tokens per pass over an item's panels: their 16-bit x (64 x 2048 x 2 bytes at most for these
# models) stays in L2 while every panel of the item meets it, instead of all tokens streaming
# through per panel (a 2 MB x from L3 per 8 rows made ffn_down L3-bound).
TOKEN_BLOCK = 64


@njit(cache=True, nogil=True, inline="always")
def panel_scratch(n_rows, n_cols):
    """(panels, codes, fields): an item's panels of n_rows rows and what a K-quant's are
    unpacked through (panel_of)."""
    panels = np.empty((-(-n_rows // GROUP_ROWS), (n_cols // 32) * PANEL_SUB_BYTES), np.uint8)
    codes = np.empty((GROUP_ROWS, n_cols), np.uint8)
    fields = np.empty((4, n_cols // 32, GROUP_ROWS), np.float32)
    return panels, codes, fields


@njit(cache=True, nogil=True, inline="always")
def panel_of(data, ggml_type, r0, f16, codes, fields, panel):
    """The panel of rows r0.. of data: the legacy types' from their chunks, the K-quants' through
    codes and fields (unpacked row by row, then transposed)."""
    if ggml_type == Q8_0:
        panel_q8_0(data, r0, panel)
    elif ggml_type == Q4_0:
        panel_q4_0(data, r0, panel)
    elif ggml_type == Q4_1:
        panel_q4_1(data, r0, panel)
    elif ggml_type == Q5_0:
        panel_q5_0(data, r0, panel)
    elif ggml_type == Q5_1:
        panel_q5_1(data, r0, panel)
    else:
        if ggml_type == Q4_K:
            unpack_q4_k(data, r0, f16, codes, fields)
        elif ggml_type == Q5_K:
            unpack_q5_k(data, r0, f16, codes, fields)
        elif ggml_type == Q6_K:
            unpack_q6_k(data, r0, f16, codes, fields)
        transpose_panel(codes, fields, panel)


@njit(cache=True, nogil=True, inline="always")
def panels_times_x(panels, start, rows, xq, xd, xs32, xs16, out, halves):
    """out[:, start + GROUP_ROWS * p ...] from panels [n_panels, sub bytes], tokens TOKEN_BLOCK
    at a time against every panel."""
    n = xq.shape[0]
    for c0 in range(0, n, TOKEN_BLOCK):
        c1 = min(n, c0 + TOKEN_BLOCK)
        for p in range(panels.shape[0]):
            if halves:
                panel_times_x_halves(panels[p], start + GROUP_ROWS * p, rows, xq, xd, xs32, xs16, out, c0, c1)
            else:
                panel_times_x(panels[p], start + GROUP_ROWS * p, rows, xq, xd, xs32, xs16, out, c0, c1)


@njit(cache=True, nogil=True, inline="always")
def gemm_rows(data, ggml_type, xq, xd, xs32, xs16, f16, out, start, stop):
    """out[:, start:stop] = x @ W[start:stop].T for x quantized to 16 bits (quantize_x16: xq,
    xd, xs32, xs16 [n, ...]); start a multiple of GROUP_ROWS; the legacy types repacked
    (interleave.py). One work item of a team job (jobs.GEMM): the item's panels first, then
    tokens TOKEN_BLOCK at a time against each."""
    panels, codes, fields = panel_scratch(stop - start, xq.shape[1])
    for p in range(panels.shape[0]):
        panel_of(data, ggml_type, start + GROUP_ROWS * p, f16, codes, fields, panels[p])
    panels_times_x(panels, start, data.shape[0], xq, xd, xs32, xs16, out, ggml_type == Q6_K)
