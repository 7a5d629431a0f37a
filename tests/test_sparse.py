"""2:4 sparsity: the pruning methods, the compact layout and its kernels, and `edgellm convert
--sparsity` / `edgellm info --sparsity` end to end on a tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants
from test_convert_checkpoints import make_checkpoint
from x86_asm import zmm_work

import edgellm
from edgellm import sparse
from edgellm.cli import main
from edgellm.converters import convert
from edgellm.converters.errors import ConvertError
from edgellm.converters.sparsity import (
    keep_largest, prune_magnitude, prune_sparsegpt, prune_wanda,
)
from edgellm.gguf_file import GGUFFile
from edgellm.kernels import dequantize, matmul
from edgellm.kernels import sparse as sparse_kernels

CALIB = Path(__file__).parent / "data" / "calibration.txt"
RNG = np.random.default_rng(0)


def pruned_twin(rows: int, cols: int, qtype: Q) -> np.ndarray:
    """A random 2:4 matrix (magnitude-pruned) as Q4_0/Q8_0 bytes."""
    w = prune_magnitude(RNG.standard_normal((rows, cols)).astype(np.float32), 2, 4)
    return quants.quantize(w, qtype).view(np.uint8).reshape(rows, -1)


def is_2_4(w: np.ndarray) -> bool:
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


# --- the compact layout and its kernels ------------------------------------------------------------

@pytest.mark.parametrize("qtype,bits", [(Q.Q4_0, 3.5), (Q.Q8_0, 5.5)])
def test_compact_planes_hold_the_twins_values_in_fewer_bits(qtype, bits):
    twin = pruned_twin(48, 256, qtype)
    w = sparse.from_twin("w", twin, qtype, 256)
    assert np.array_equal(w.dequantize(), dequantize(twin, qtype, 256))
    assert 8 * w.nbytes / (48 * 256) == bits


@pytest.mark.parametrize("n", [1, 3, 8, 20])
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0])
def test_compact_matmul_equals_the_dense_kernels_on_the_twin(qtype, n):
    twin = pruned_twin(80, 512, qtype)
    x = RNG.standard_normal((n, 512)).astype(np.float32)
    got = sparse.from_twin("w", twin, qtype, 512).matmul(x)  # n > 8: the twin's rows, dense GEMM
    want = matmul(x, twin, qtype, 512)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("n", [1, 20])
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0])
def test_a_group_of_weights_is_one_job_with_each_weights_products(qtype, n):
    """Q, K and V (or gate and up) of different heights through one team job (four weights: a
    full job of three, then one) give what each twin gives through the dense kernels."""
    twins = [pruned_twin(rows, 256, qtype) for rows in (64, 32, 96, 8)]
    x = RNG.standard_normal((n, 256)).astype(np.float32)
    got = sparse.SparseGroup([sparse.from_twin(f"w{i}", t, qtype, 256) for i, t in enumerate(twins)]).matmul(x)
    for y, twin in zip(got, twins, strict=True):
        want = matmul(x, twin, qtype, 256)
        assert np.allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# the explicit-vector rows run where the CPU has AVX-512 VBMI or AVX2; the loop everywhere
ROW_KERNELS = ["loop"] + (["vector"] if sparse_kernels.VECTOR_KERNEL else [])


@pytest.mark.parametrize("kernel", ROW_KERNELS)
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0])
@pytest.mark.parametrize("n_cols", [512, 576, 640, 704])  # 8-11 pairs of blocks: 4-pair steps, then 0-3
def test_both_row_kernels_equal_the_dense_kernels(qtype, kernel, n_cols):
    import numba

    from edgellm.kernels.matvec import f16_table, quantize_x

    twin = pruned_twin(70, n_cols, qtype)
    w = sparse.from_twin("w", twin, qtype, n_cols)
    x = RNG.standard_normal((2, n_cols)).astype(np.float32)
    xq, xd = quantize_x(x)[:2]
    got = np.empty((2, 70), np.float32)
    q8 = qtype == Q.Q8_0
    if kernel == "loop":
        sparse_kernels.rows_loop(w.values, w.index, w.scales, xq, xd, got, 0, 70, q8)
    else:
        rows = sparse_kernels.sparse_rows_q8 if q8 else sparse_kernels.sparse_rows_q4
        call = numba.njit(lambda v, i, s, xq, xd, f16, out: rows(v, i, s, xq, xd, f16, out, 0, out.shape[1]))
        call(w.values, w.index, w.scales, xq, xd, f16_table(), got)
    want = matmul(x, twin, qtype, n_cols)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("n_cols", [256, 640])
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0], ids=lambda t: t.name)
def test_the_arm_row_kernel_under_qemu(arm_harnesses, tmp_path, qtype, n_cols):
    """The compact rows as an ARM CPU runs them (tbl lookups, sdot or its generic form; tests/
    arm_rows.py, run by qemu) against this machine's: the same products, bit for bit against the
    AVX-512 VBMI kernel, whose slot order they share (640: Gemma's rows, 5 pairs, the odd one
    alone)."""
    import numba

    from edgellm.kernels.matvec import f16_table, quantize_x

    w = sparse.from_twin("w", pruned_twin(70, n_cols, qtype), qtype, n_cols)
    x = RNG.standard_normal((1, n_cols)).astype(np.float32)
    xq, xd = quantize_x(x)[:2]
    q8 = qtype == Q.Q8_0
    here = np.empty((1, 70), np.float32)
    if sparse_kernels.VECTOR_KERNEL:
        rows = sparse_kernels.sparse_rows_q8 if q8 else sparse_kernels.sparse_rows_q4
        numba.njit(lambda v, i, s, xq, xd, f16, out: rows(v, i, s, xq, xd, f16, out, 0, out.shape[1]))(
            w.values, w.index, w.scales, xq, xd, f16_table(), here)
    else:
        sparse_kernels.rows_loop(w.values, w.index, w.scales, xq, xd, here, 0, 70, q8)
    case = tmp_path / "case.bin"
    with open(case, "wb") as f:
        f.write(np.array([70, n_cols], np.int64).tobytes())
        for part in (w.values, w.index, w.scales, xq, xd, f16_table()):
            f.write(np.ascontiguousarray(part).tobytes())
    arm = {variant: run("sparse_q8" if q8 else "sparse_q4", case) for variant, run in arm_harnesses.items()}
    assert np.array_equal(arm["dotprod"], arm["generic"])
    if sparse_kernels.HAS_VBMI:  # the same slots, lanes and float steps: the same bits
        assert np.array_equal(arm["dotprod"], here[0])
    else:  # AVX2's own slot order: other lanes
        np.testing.assert_allclose(arm["dotprod"], here[0], rtol=1e-5, atol=1e-5 * np.abs(here).max())


@pytest.mark.skipif(not sparse_kernels.HAS_VBMI, reason="the AVX-512 VBMI kernel")
@pytest.mark.parametrize("q8", [False, True], ids=["q4", "q8"])
def test_the_vbmi_row_kernel_stays_on_256_bit_registers(q8):
    """The pick of kept x codes is a ymm vpermi2b: LLVM fused it with its two loads into a zmm
    vpermb, and on Intel one 512-bit instruction in flight takes port 1 from all the others
    (the 2:4 rows then ran 1.1x the dense ones instead of 1.3-1.4x). Compiled afresh: cached
    code cannot be read."""
    import re

    import numba

    from edgellm.kernels.matvec import f16_table, quantize_x

    rows = sparse_kernels.sparse_rows_q8 if q8 else sparse_kernels.sparse_rows_q4
    call = numba.njit(lambda v, i, s, xq, xd, f16, out: rows(v, i, s, xq, xd, f16, out, 0, out.shape[1]))
    w = sparse.from_twin("w", pruned_twin(4, 512, Q.Q8_0 if q8 else Q.Q4_0), Q.Q8_0 if q8 else Q.Q4_0, 512)
    x = RNG.standard_normal((1, 512)).astype(np.float32)
    call(w.values, w.index, w.scales, *quantize_x(x)[:2], f16_table(), np.empty((1, 4), np.float32))
    asm = call.inspect_asm(call.signatures[0])
    from edgellm.kernels.simd import VNNI

    dot = "vpdpbusd" if VNNI else "vpmaddubsw"
    assert re.search(r"\bvpermi2b\s+%ymm", asm) and re.search(rf"\b{dot}\s+[^\n]*%ymm", asm)
    assert zmm_work(asm) == []


def test_a_group_with_three_non_zeros_cannot_be_packed():
    w = prune_magnitude(RNG.standard_normal((4, 64)).astype(np.float32), 2, 4)
    w[2, 5:8] = 1.0  # group 1 of row 2 now holds three
    with pytest.raises(sparse.SparsityError, match="more than 2 non-zero"):
        sparse.pack_twin(quants.quantize(w, Q.Q4_0).view(np.uint8).reshape(4, -1), Q.Q4_0, 64)


# --- the pruning methods -------------------------------------------------------------------------

def test_magnitude_keeps_the_two_largest_of_every_four():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 4.0, 3.0, -2.0, 1.0]], np.float32)
    assert prune_magnitude(w, 2, 4).tolist() == [[0.0, -3.0, 2.0, 0.0, 4.0, 3.0, 0.0, 0.0]]


def test_wanda_weighs_each_weight_by_its_inputs_norm():
    w = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    norm = np.array([100.0, 1.0, 1.0, 1.0])  # feature 0 is loud: 1 x 100 beats 3 x 1
    assert prune_wanda(w, norm, 2, 4).tolist() == [[1.0, 0.0, 0.0, 4.0]]


def test_keep_largest_keeps_n_of_every_m():
    keep = keep_largest(RNG.standard_normal((16, 64)), 2, 8)
    assert (keep.reshape(16, -1, 8).sum(-1) == 2).all()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0])
def test_sparsegpt_reconstructs_the_layer_output_better_than_magnitude(qtype):
    # inputs with correlated, unequal features, as real activations have
    x = RNG.standard_normal((512, 128)) @ RNG.standard_normal((128, 128)) * RNG.uniform(0.1, 3, 128)
    w = RNG.standard_normal((64, 128)).astype(np.float32)
    twin = prune_sparsegpt(w, x.T @ x, 2, 4, qtype)
    w_gpt = dequantize(twin, qtype, 128)
    w_mag = dequantize(quants.quantize(prune_magnitude(w, 2, 4), qtype).view(np.uint8).reshape(64, -1), qtype, 128)
    assert is_2_4(w_gpt)

    def error(v):
        return np.linalg.norm(x @ (v - w).T)

    assert error(w_gpt) < 0.7 * error(w_mag)


# --- the converter, the runtime and `info --sparsity` --------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sparse") / "llama", "llama")


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sparse-out")
    out = {"plain": convert(checkpoint, root / "plain.gguf", type="q4_0", progress=False)}
    for layout in ("dense", "compact"):
        out[layout] = convert(checkpoint, root / f"{layout}.gguf", type="q4_0", sparsity="2:4",
                              method="sparsegpt", sparse_layout=layout, calib=CALIB, calib_tokens=256,
                              progress=False)
    return out


def test_both_layouts_give_the_same_logits(files):
    ids = np.arange(1, 40)
    dense = edgellm.load(files["dense"], threads=2).logits(ids)
    compact = edgellm.load(files["compact"], threads=2).logits(ids)
    assert np.allclose(dense, compact, atol=1e-4)


def test_the_dense_layout_is_a_standard_q4_0_file_with_zeros_in_place(files):
    plain, dense = GGUFFile(files["plain"]), GGUFFile(files["dense"])
    assert {n: (t.shape, t.ggml_type) for n, t in plain.tensors.items()} == \
           {n: (t.shape, t.ggml_type) for n, t in dense.tensors.items()}
    pruned = dense.metadata["edgellm.sparsity.tensors"]
    assert len(pruned) == 14  # 7 weights x 2 layers; embeddings, output and norms stay dense
    for name in pruned:
        t = dense.tensors[name]
        assert is_2_4(dequantize(t.data, t.ggml_type, t.shape[1]))


def test_the_compact_layout_is_smaller(files):
    assert files["compact"].stat().st_size < files["dense"].stat().st_size


def test_info_sparsity_checks_every_group(files, capsys):
    assert main(["info", str(files["compact"]), "--sparsity"]) == 0
    report = capsys.readouterr().out
    assert "all 18,432 groups of 4 hold at most 2 non-zero weights (3.50 bits/weight" in report
    assert main(["info", str(files["plain"]), "--sparsity"]) == 0
    assert "sparsity:      none" in capsys.readouterr().out


def test_info_sparsity_fails_on_a_broken_group(files, tmp_path, capsys):
    g = GGUFFile(files["dense"])
    t = g.tensors["blk.0.ffn_up.weight"]
    broken = tmp_path / "broken.gguf"
    raw = bytearray(files["dense"].read_bytes())
    start = raw.find(t.data.tobytes())
    raw[start + 2:start + 4] = bytes([0x11, 0x11])  # the first 4 values of block 0 all non-zero
    broken.write_bytes(bytes(raw))
    assert main(["info", str(broken), "--sparsity"]) == 2
    assert "blk.0.ffn_up.weight: 1 of" in capsys.readouterr().err


def test_dense_keeps_the_named_layers_and_tensors(checkpoint, tmp_path):
    out = convert(checkpoint, tmp_path / "d.gguf", type="q8_0", sparsity="2:4", method="magnitude",
                  dense="0,ffn_down", progress=False)
    pruned = GGUFFile(out).metadata["edgellm.sparsity.tensors"]
    assert pruned == [f"blk.1.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                    "ffn_gate", "ffn_up")]


# --- bad input: one line, exit 2, nothing written --------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--sparsity", "3:2"], "N:M with 0 < N < M"),
    (["--sparsity", "2:3", "--sparse-layout", "dense", "--method", "magnitude"], "groups of 3 do not divide"),
    (["--sparsity", "2:4"], "needs calibration text"),
    (["--sparsity", "2:4", "--method", "magnitude", "--type", "f16"], "needs --type q4_0 or q8_0"),
    (["--sparsity", "2:4", "--method", "magnitude", "--dense", "atn"], "'atn' matches no prunable tensor"),
    (["--sparsity", "2:4", "--calib", str(CALIB), "--calib-tokens", "100000"], "fewer than the 100000"),
])
def test_bad_sparsity_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, flags, message):
    out = tmp_path / "out.gguf"
    assert main(["convert", str(checkpoint), str(out), "--type", "q4_0", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_the_api_raises_convert_errors(checkpoint, tmp_path):
    with pytest.raises(ConvertError, match="compact layout stores 2:4 only"):
        convert(checkpoint, tmp_path / "x.gguf", type="q4_0", sparsity="1:4", method="magnitude")
