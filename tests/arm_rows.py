"""The decode row kernels (kernels/simd.py, kernels/interleave.py) and the prefill GEMM's
(kernels/gemm.py) built for AArch64 as an object file, for running under qemu on an x86 machine
(tests/test_kernels.py::test_the_arm_kernels_under_qemu).

    python tests/arm_rows.py dotprod|generic OUT.o

Each quantized type's rows_<type> codegen (rows_x8_<type> for the legacy types, whose data the
caller repacks) is called with numba's CPU target context (nothing is compiled for the host)
inside a C-callable function

    void harness_<type>(uint8_t *data, int64_t rows, int64_t row_bytes, int8_t *xq, float *xd,
                        float *xs32, float *xs16, float *f16, float *out, int64_t n_cols)

(one x row, rows 0..rows), and the prefill GEMM's parts (panel_<type>, or unpack_<type> and
transpose_panel; panel_times_x: gemm.gemm_rows without its allocations) inside

    void gemm_<type>(uint8_t *data, int64_t rows, int64_t row_bytes, int16_t *xq, float *xd,
                     float *xs32, float *xs16, float *f16, float *out, int64_t n_cols,
                     int64_t n, uint8_t *codes, float *fields, uint8_t *panel)

(n x rows, x quantized to 16 bits; codes, fields and panel: scratch of gemm's sizes), and the
module is lowered for a Cortex-A76 (the Raspberry Pi 5's
core) with or without the dot product extension (sdot): the kernels' DOTPROD path or their
generic one. Run it with EDGELLM_GENERIC_SIMD=1, so that no x86 path is taken.
"""

from __future__ import annotations

import sys

import llvmlite.binding as llvm
from edgellm.kernels import gemm, interleave, simd
from edgellm.kernels import sparse as sparse_kernels
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.registry import cpu_target

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k")
LEGACY = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # repacked: rows_x8_<type>, panel_<type>
TRIPLE = "aarch64-unknown-linux-gnu"
I64, I8P, F32P = ir.IntType(64), ir.IntType(8).as_pointer(), ir.FloatType().as_pointer()
U8_2, I8_2 = types.Array(types.uint8, 2, "C"), types.Array(types.int8, 2, "C")
F32_1, F32_2 = types.Array(types.float32, 1, "C"), types.Array(types.float32, 2, "C")
ARG_TYPES = (U8_2, F32_2, I8_2, F32_2, F32_2, F32_2, F32_1, F32_2, types.int64, types.int64)

I16P = ir.IntType(16).as_pointer()
I16_2, U8_1, F32_3 = types.Array(types.int16, 2, "C"), types.Array(types.uint8, 1, "C"), types.Array(types.float32, 3, "C")
UNPACK_TYPES = (U8_2, types.int64, F32_1, U8_2, F32_3)
U16_2 = types.Array(types.uint16, 2, "C")
PANEL_TYPES = (U8_1, types.int64, types.int64, I16_2, F32_2, F32_2, F32_2, F32_2, types.int64, types.int64)

HARNESS_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef void (*rows_fn)(uint8_t *, int64_t, int64_t, int8_t *, float *, float *, float *, float *, float *, int64_t);
#define TYPE(t) void harness_##t(uint8_t *, int64_t, int64_t, int8_t *, float *, float *, float *, float *, float *, int64_t);
typedef void (*gemm_fn)(uint8_t *, int64_t, int64_t, int16_t *, float *, float *, float *, float *, float *, int64_t,
                        int64_t, uint8_t *, float *, uint8_t *);
#define GEMM(t) void gemm_##t(uint8_t *, int64_t, int64_t, int16_t *, float *, float *, float *, float *, float *, \
                              int64_t, int64_t, uint8_t *, float *, uint8_t *);
TYPE(q8_0) TYPE(q4_0) TYPE(q4_1) TYPE(q5_0) TYPE(q5_1) TYPE(q4_k) TYPE(q5_k) TYPE(q6_k)
GEMM(q8_0) GEMM(q4_0) GEMM(q4_1) GEMM(q5_0) GEMM(q5_1) GEMM(q4_k) GEMM(q5_k) GEMM(q6_k)
static const char *names[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"};
static rows_fn fns[] = {harness_q8_0, harness_q4_0, harness_q4_1, harness_q5_0, harness_q5_1,
                        harness_q4_k, harness_q5_k, harness_q6_k};
static gemm_fn gemms[] = {gemm_q8_0, gemm_q4_0, gemm_q4_1, gemm_q5_0, gemm_q5_1, gemm_q4_k, gemm_q5_k, gemm_q6_k};
void sparse_q4(uint8_t *, uint8_t *, uint16_t *, int8_t *, float *, float *, float *, int64_t, int64_t);
void sparse_q8(uint8_t *, uint8_t *, uint16_t *, int8_t *, float *, float *, float *, int64_t, int64_t);
static void *take(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) { fprintf(stderr, "short input\n"); exit(2); }
    return p;
}
/* harness sparse_q4|sparse_q8 IN OUT; IN: rows, n_cols (int64) | values | index | scales | xq | xd | f16 */
static int sparse(int q8, const char *in, const char *out_path) {
    FILE *f = fopen(in, "rb");
    int64_t h[2];
    if (!f || fread(h, 8, 2, f) != 2) return 2;
    int64_t rows = h[0], n = h[1];
    uint8_t *values = take(f, rows * n / (q8 ? 2 : 4)), *index = take(f, rows * n / 8);
    uint16_t *scales = take(f, rows * n / 32 * 2);
    int8_t *xq = take(f, n);
    float *xd = take(f, n / 32 * 4), *f16 = take(f, 65536 * 4), *out = calloc(rows, 4);
    fclose(f);
    (q8 ? sparse_q8 : sparse_q4)(values, index, scales, xq, xd, f16, out, rows, n);
    f = fopen(out_path, "wb");
    return !f || fwrite(out, 4, rows, f) != (size_t)rows;
}

/* usage: harness TYPE IN OUT; IN: rows, row_bytes, n_cols, tokens, data_rows (int64; tokens 0: one x
   row in 8 bits, the decode rows; else that many in 16 bits, the GEMM; data_rows: the rows the data
   holds, a repacked weight's padding included) | data | xq | xd | xs32 | xs16 | f16 */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    if (!strncmp(argv[1], "sparse_", 7)) return sparse(!strcmp(argv[1], "sparse_q8"), argv[2], argv[3]);
    FILE *f = fopen(argv[2], "rb");
    int64_t h[5];
    if (!f || fread(h, 8, 5, f) != 5) return 2;
    int64_t rows = h[0], row_bytes = h[1], n = h[2], tokens = h[3], t = tokens ? tokens : 1;
    uint8_t *data = take(f, h[4] * row_bytes);
    void *xq = take(f, t * n * (tokens ? 2 : 1));
    float *xd = take(f, t * n / 32 * 4), *xs32 = take(f, t * n / 32 * 4), *xs16 = take(f, t * n / 16 * 4);
    float *f16 = take(f, 65536 * 4), *out = calloc(t * rows, 4);
    fclose(f);
    uint8_t *codes = malloc(16 * n), *panel = malloc(n / 32 * 20 * 64);  /* room for 16-row panels */
    float *fields = malloc(4 * n / 32 * 16 * 4);
    for (int i = 0; i < 8; i++)
        if (!strcmp(argv[1], names[i])) {
            if (tokens)
                gemms[i](data, rows, row_bytes, xq, xd, xs32, xs16, f16, out, n, tokens, codes, fields, panel);
            else
                fns[i](data, rows, row_bytes, xq, xd, xs32, xs16, f16, out, n);
        }
    f = fopen(argv[3], "wb");
    return !f || fwrite(out, 4, t * rows, f) != (size_t)(t * rows);
}
"""


def _array(ctx, builder, t, data, shape, itemsize):
    """A numba array struct over data, C-contiguous with the given shape."""
    a = cgutils.create_struct_proxy(t)(ctx, builder)
    a.meminfo = cgutils.get_null_value(a.meminfo.type)
    a.parent = cgutils.get_null_value(a.parent.type)
    a.data = builder.bitcast(data, a.data.type)
    a.itemsize = ir.Constant(I64, itemsize)
    n, strides, step = ir.Constant(I64, 1), [], ir.Constant(I64, itemsize)
    for s in reversed(shape):
        strides.insert(0, step)
        step, n = builder.mul(step, s), builder.mul(n, s)
    a.nitems = n
    a.shape = cgutils.pack_array(builder, list(shape))
    a.strides = cgutils.pack_array(builder, strides)
    return a._getvalue()


def _gemm_harness(ctx, typing, module, name):
    """gemm_<name>: for each group of gemm.GROUP_ROWS rows, unpack, transpose, multiply."""
    fnty = ir.FunctionType(ir.VoidType(), [I8P, I64, I64, I16P, F32P, F32P, F32P, F32P, F32P, I64, I64, I8P, F32P, I8P])
    fn = ir.Function(module, fnty, f"gemm_{name}")
    b = ir.IRBuilder(fn.append_basic_block())
    data, rows, row_bytes, xq, xd, xs32, xs16, f16, out, n_cols, n, codes, fields, panel = fn.args
    group = ir.Constant(I64, gemm.GROUP_ROWS)
    n_subs = b.udiv(n_cols, ir.Constant(I64, 32))
    data_a = _array(ctx, b, U8_2, data, (rows, row_bytes), 1)
    f16_a = _array(ctx, b, F32_1, f16, (ir.Constant(I64, 65536),), 4)
    codes_a = _array(ctx, b, U8_2, codes, (group, n_cols), 1)
    fields_a = _array(ctx, b, F32_3, fields, (ir.Constant(I64, 4), n_subs, group), 4)
    panel_a = _array(ctx, b, U8_1, panel, (b.mul(n_subs, ir.Constant(I64, gemm.PANEL_SUB_BYTES)),), 1)
    x_arrays = [_array(ctx, b, I16_2, xq, (n, n_cols), 2), _array(ctx, b, F32_2, xd, (n, n_subs), 4),
                _array(ctx, b, F32_2, xs32, (n, n_subs), 4),
                _array(ctx, b, F32_2, xs16, (n, b.udiv(n_cols, ir.Constant(I64, 16))), 4),
                _array(ctx, b, F32_2, out, (n, rows), 4)]
    if name in LEGACY:
        panel_sig, panel_from_chunks = getattr(gemm, f"panel_{name}")._defn(typing, U8_2, types.int64, U8_1)
    else:
        unpack_sig, unpack = getattr(gemm, f"unpack_{name}")._defn(typing, *UNPACK_TYPES)
        transpose_sig, transpose = gemm.transpose_panel._defn(typing, U8_2, F32_3, U8_1)
    times = gemm.panel_times_x_halves if name == "q6_k" else gemm.panel_times_x
    times_sig, times_x = times._defn(typing, *PANEL_TYPES)
    n_groups = b.udiv(b.add(rows, ir.Constant(I64, gemm.GROUP_ROWS - 1)), group)
    with cgutils.for_range(b, n_groups) as loop:
        r0 = b.mul(loop.index, group)
        if name in LEGACY:
            panel_from_chunks(ctx, b, panel_sig, [data_a, r0, panel_a])
        else:
            unpack(ctx, b, unpack_sig, [data_a, r0, f16_a, codes_a, fields_a])
            transpose(ctx, b, transpose_sig, [codes_a, fields_a, panel_a])
        times_x(ctx, b, times_sig, [panel_a, r0, rows, *x_arrays, ir.Constant(I64, 0), n])
    b.ret_void()


def _sparse_harness(ctx, typing, module, q8):
    """sparse_<q4|q8>(values, index, scales, xq, xd, f16, out, rows, n_cols): the 2:4 compact
    rows (kernels/sparse.py) times one x row."""
    fnty = ir.FunctionType(ir.VoidType(), [I8P, I8P, I16P, I8P, F32P, F32P, F32P, I64, I64])
    fn = ir.Function(module, fnty, f"sparse_{'q8' if q8 else 'q4'}")
    b = ir.IRBuilder(fn.append_basic_block())
    values, index, scales, xq, xd, f16, out, rows, n_cols = fn.args
    one = ir.Constant(I64, 1)
    value_type = I8_2 if q8 else U8_2
    args = [_array(ctx, b, value_type, values, (rows, b.udiv(n_cols, ir.Constant(I64, 2 if q8 else 4))), 1),
            _array(ctx, b, U8_2, index, (rows, b.udiv(n_cols, ir.Constant(I64, 8))), 1),
            _array(ctx, b, U16_2, scales, (rows, b.udiv(n_cols, ir.Constant(I64, 32))), 2),
            _array(ctx, b, I8_2, xq, (one, n_cols), 1),
            _array(ctx, b, F32_2, xd, (one, b.udiv(n_cols, ir.Constant(I64, 32))), 4),
            _array(ctx, b, F32_1, f16, (ir.Constant(I64, 65536),), 4), _array(ctx, b, F32_2, out, (one, rows), 4),
            ir.Constant(I64, 0), rows]
    kernel = sparse_kernels.sparse_rows_q8 if q8 else sparse_kernels.sparse_rows_q4
    sig, codegen = kernel._defn(typing, value_type, U8_2, U16_2, I8_2, F32_2, F32_1, F32_2, types.int64, types.int64)
    codegen(ctx, b, sig, args)
    b.ret_void()


def build(dotprod: bool, assembly: bool = False) -> bytes | str:
    """The object file (AArch64 ELF) of every type's harness, or its assembly text."""
    if simd.X86:
        raise RuntimeError("the x86 paths are on: set EDGELLM_GENERIC_SIMD=1")
    simd.DOTPROD = interleave.DOTPROD = dotprod  # what simd.py sets on an ARM CPU with / without sdot
    interleave.Q8_0_SIGNED = dotprod
    sparse_kernels.NEON = True  # and sparse.py on any ARM CPU
    ctx, typing = cpu_target.target_context, cpu_target.typing_context
    module = ir.Module("arm_rows")
    fnty = ir.FunctionType(ir.VoidType(), [I8P, I64, I64, I8P, F32P, F32P, F32P, F32P, F32P, I64])
    for name in TYPES:
        fn = ir.Function(module, fnty, f"harness_{name}")
        b = ir.IRBuilder(fn.append_basic_block())
        data, rows, row_bytes, xq, xd, xs32, xs16, f16, out, n_cols = fn.args
        one = ir.Constant(I64, 1)
        b32, b16 = b.udiv(n_cols, ir.Constant(I64, 32)), b.udiv(n_cols, ir.Constant(I64, 16))
        args = [_array(ctx, b, U8_2, data, (rows, row_bytes), 1), _array(ctx, b, F32_2, xd, (one, n_cols), 4),
                _array(ctx, b, I8_2, xq, (one, n_cols), 1), _array(ctx, b, F32_2, xd, (one, b32), 4),
                _array(ctx, b, F32_2, xs32, (one, b32), 4), _array(ctx, b, F32_2, xs16, (one, b16), 4),
                _array(ctx, b, F32_1, f16, (ir.Constant(I64, 65536),), 4), _array(ctx, b, F32_2, out, (one, rows), 4),
                ir.Constant(I64, 0), rows]
        kernel = getattr(interleave, f"rows_x8_{name}") if name in LEGACY else getattr(simd, f"rows_{name}")
        sig, codegen = kernel._defn(typing, *ARG_TYPES)
        codegen(ctx, b, sig, args)
        b.ret_void()
        _gemm_harness(ctx, typing, module, name)
    for q8 in (False, True):
        _sparse_harness(ctx, typing, module, q8)
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    machine = llvm.Target.from_triple(TRIPLE).create_target_machine(
        cpu="cortex-a76", features="+neon,+dotprod" if dotprod else "+neon,-dotprod", opt=3, reloc="pic")
    parsed = llvm.parse_assembly(str(module))
    parsed.triple, parsed.data_layout = TRIPLE, str(machine.target_data)
    parsed.verify()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    passes.getModulePassManager().run(parsed, passes)
    return machine.emit_assembly(parsed) if assembly else machine.emit_object(parsed)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dotprod", "generic"):
        sys.exit("usage: EDGELLM_GENERIC_SIMD=1 python tests/arm_rows.py dotprod|generic OUT.o")
    with open(sys.argv[2], "wb") as f:
        f.write(build(sys.argv[1] == "dotprod"))
