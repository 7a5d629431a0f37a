"""`edgellm convert` on tiny random checkpoints of every architecture: which tensors come out, in
which types, with which values, and the metadata llama.cpp reads."""

from __future__ import annotations

import importlib

import argparse
import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, TokenType, quants
from test_convert_checkpoints import (  # noqa: F401  (checkpoints is a fixture)
    ARCHS, BOS, CHAT_TEMPLATE, EOS, LLAMA3_VOCAB, PAD, UNK, checkpoints, expected_hf_values, gguf_values,
    hf_name, hf_tensors, make_checkpoint, read_config, spm, torch, undo_rope_permutation,
)

from edgellm.converters import convert
from edgellm.converters.cli import add_arguments, run
from edgellm.gguf_file import GGUFFile

TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
         "q5_0": Q.Q5_0}


@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory):
    """converted(arch, type) -> GGUFFile of that checkpoint converted to that type (made once)."""
    root, done = tmp_path_factory.mktemp("gguf"), {}

    def get(arch: str, type: str) -> GGUFFile:
        if (arch, type) not in done:
            out = convert(checkpoints[arch], root / f"{arch}-{type}.gguf", type=type, progress=False)
            done[arch, type] = GGUFFile(out)
        return done[arch, type]

    return get


def expected_names(arch: str, n_layer: int) -> set[str]:
    block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
             "ffn_up", "ffn_down"]
    if arch in ("qwen3", "gemma3"):
        block += ["attn_q_norm", "attn_k_norm"]
    if arch == "gemma3":
        block += ["post_attention_norm", "post_ffw_norm"]
    names = {f"blk.{il}.{kind}.weight" for il in range(n_layer) for kind in block}
    if arch == "qwen2":
        names |= {f"blk.{il}.attn_{x}.bias" for il in range(n_layer) for x in "qkv"}
    names |= {"token_embd.weight", "output_norm.weight"}
    if arch != "gemma3":  # gemma3 ties the output projection to token_embd
        names.add("output.weight")
    return names


def expected_type(name: str, ndim: int, type: str) -> Q:
    if ndim == 1:
        return Q.F32
    if name in ("token_embd.weight", "output.weight") and type in ("q4_0", "q4_1", "q5_0"):
        return Q.Q8_0
    return TYPES[type]


@pytest.mark.parametrize("type", ["f32", "f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_present_with_hf_shape_and_policy_type(checkpoints, converted, arch, type):
    out = converted(arch, type)
    hf = hf_tensors(checkpoints[arch])
    n_layer = read_config(checkpoints[arch])["num_hidden_layers"]
    assert set(out.tensors) == expected_names(arch, n_layer)
    for name, t in out.tensors.items():
        assert t.shape == hf[hf_name(arch, name)].shape, name
        assert t.ggml_type == expected_type(name, len(t.shape), type), name


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_values_are_the_hf_weights_after_the_documented_transforms(checkpoints, converted, arch):
    out, hf, cfg = converted(arch, "f32"), hf_tensors(checkpoints[arch]), read_config(checkpoints[arch])
    for name, t in out.tensors.items():
        assert np.array_equal(gguf_values(t), expected_hf_values(arch, name, hf, cfg)), name


def test_llama_q_and_k_rows_are_permuted_for_adjacent_pair_rope(checkpoints, converted):
    out, hf = converted("llama", "f32"), hf_tensors(checkpoints["llama"])
    q, k = gguf_values(out.tensors["blk.1.attn_q.weight"]), gguf_values(out.tensors["blk.1.attn_k.weight"])
    assert not np.array_equal(q, hf["model.layers.1.self_attn.q_proj.weight"])
    assert np.array_equal(undo_rope_permutation(q, 4), hf["model.layers.1.self_attn.q_proj.weight"])
    assert np.array_equal(undo_rope_permutation(k, 2), hf["model.layers.1.self_attn.k_proj.weight"])


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3"])
def test_neox_rope_architectures_keep_hf_row_order(checkpoints, converted, arch):
    out, hf = converted(arch, "f32"), hf_tensors(checkpoints[arch])
    assert np.array_equal(gguf_values(out.tensors["blk.0.attn_q.weight"]),
                          hf["model.layers.0.self_attn.q_proj.weight"])


def test_gemma3_norm_weights_get_plus_one(checkpoints, converted):
    out, hf = converted("gemma3", "f32"), hf_tensors(checkpoints["gemma3"])
    for gguf_name, hf_name_ in [("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
                                ("blk.2.ffn_norm.weight", "model.layers.2.pre_feedforward_layernorm.weight"),
                                ("output_norm.weight", "model.norm.weight")]:
        assert np.array_equal(gguf_values(out.tensors[gguf_name]), hf[hf_name_] + np.float32(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_f16_values_are_the_transformed_weights_rounded_to_f16(checkpoints, converted, arch):
    out, hf, cfg = converted(arch, "f16"), hf_tensors(checkpoints[arch]), read_config(checkpoints[arch])
    for name, t in out.tensors.items():
        want = expected_hf_values(arch, name, hf, cfg)
        if t.ggml_type == Q.F16:
            want = want.astype(np.float16).astype(np.float32)
        assert np.array_equal(gguf_values(t), want), name


@pytest.mark.parametrize("type", ["bf16", "q8_0", "q4_0", "q4_1", "q5_0"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_encoded_bytes_equal_the_reference_quantizer(checkpoints, converted, arch, type):
    out, hf, cfg = converted(arch, type), hf_tensors(checkpoints[arch]), read_config(checkpoints[arch])
    for name, t in out.tensors.items():
        want = quants.quantize(expected_hf_values(arch, name, hf, cfg), t.ggml_type)
        assert t.data.tobytes() == want.tobytes(), name


def test_keep_embeddings_sets_the_type_of_token_embd_and_output(checkpoints, tmp_path):
    out = GGUFFile(convert(checkpoints["llama"], tmp_path / "e.gguf", type="q4_0", keep_embeddings="f16",
                           progress=False))
    assert out.tensors["token_embd.weight"].ggml_type == Q.F16
    assert out.tensors["output.weight"].ggml_type == Q.F16
    assert out.tensors["blk.0.attn_q.weight"].ggml_type == Q.Q4_0


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    folder = make_checkpoint(tmp_path / "odd", "llama", intermediate_size=80)  # 80 % 32 != 0
    out = GGUFFile(convert(folder, tmp_path / "odd.gguf", type="q4_0", progress=False))
    assert out.tensors["blk.0.ffn_down.weight"].ggml_type == Q.F16  # rows of 80 values
    assert out.tensors["blk.0.ffn_up.weight"].ggml_type == Q.Q4_0  # rows of 64 values


# --- metadata ------------------------------------------------------------------------------------

def fields(path) -> dict[str, tuple]:
    """{key: (value, GGUF type)} read with gguf-py's own reader, which keeps each value's type."""
    reader = GGUFReader(path)
    return {k: (f.contents(), f.types[0]) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


U32, F32, STR, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.BOOL


@pytest.mark.parametrize("arch", ARCHS)
def test_hyperparameter_metadata_has_llama_cpp_keys_and_types(checkpoints, converted, arch):
    md = fields(converted(arch, "q8_0").path)
    cfg = read_config(checkpoints[arch])
    head_dim = cfg.get("head_dim") or 16
    want = {
        "general.architecture": (arch, STR), "general.type": ("model", STR),
        "general.name": (arch, STR), "general.file_type": (7, U32),  # MOSTLY_Q8_0
        "general.quantization_version": (2, U32),
        f"{arch}.context_length": (256, U32), f"{arch}.embedding_length": (64, U32),
        f"{arch}.block_count": (cfg["num_hidden_layers"], U32), f"{arch}.feed_forward_length": (128, U32),
        f"{arch}.attention.head_count": (4, U32), f"{arch}.attention.head_count_kv": (2, U32),
        f"{arch}.attention.key_length": (head_dim, U32), f"{arch}.attention.value_length": (head_dim, U32),
    }
    for key, (value, vtype) in want.items():
        assert md[key] == (value, vtype), key
    assert md[f"{arch}.attention.layer_norm_rms_epsilon"][1] == F32
    assert md[f"{arch}.attention.layer_norm_rms_epsilon"][0] == pytest.approx(1e-5)
    if arch == "llama":
        assert md["llama.vocab_size"] == (cfg["vocab_size"], U32)
        assert md["llama.rope.dimension_count"] == (16, U32)
        assert md["llama.rope.freq_base"] == (10000.0, F32)
    if arch == "gemma3":
        assert md["gemma3.attention.sliding_window"] == (4, U32)
        assert md["gemma3.rope.freq_base"] == (1e6, F32)
        assert md["gemma3.rope.freq_base_swa"] == (10000.0, F32)
        assert "gemma3.attention.sliding_window_pattern" not in md  # llama.cpp's default: 5 + 1
        assert md["tokenizer.ggml.add_space_prefix"] == (False, BOOL)


def test_sentencepiece_vocabulary_round_trips(checkpoints, converted):
    md = fields(converted("llama", "q8_0").path)
    sp = spm.SentencePieceProcessor(model_file=str(checkpoints["llama"] / "tokenizer.model"))
    n = sp.vocab_size()
    assert md["tokenizer.ggml.model"] == ("llama", STR)
    assert md["tokenizer.ggml.pre"] == ("default", STR)
    assert md["tokenizer.ggml.tokens"][0] == [sp.IdToPiece(i) for i in range(n)]
    added = json.loads((checkpoints["llama"] / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    scores = [-1000.0 if str(i) in added else sp.GetScore(i) for i in range(n)]  # as llama.cpp
    assert md["tokenizer.ggml.scores"][0] == pytest.approx(scores)
    types = md["tokenizer.ggml.token_type"][0]
    assert types[UNK] == TokenType.UNKNOWN
    assert types[BOS] == types[EOS] == types[PAD] == TokenType.CONTROL
    assert types[sp.PieceToId("<0x41>")] == TokenType.BYTE
    assert types[sp.PieceToId("<start_of_turn>")] == TokenType.CONTROL  # special in tokenizer_config
    assert types[sp.PieceToId("<tab>")] == TokenType.USER_DEFINED
    assert types[n - 1] == TokenType.NORMAL  # the last merge SentencePiece learned
    assert md["tokenizer.ggml.bos_token_id"] == (BOS, U32)
    assert md["tokenizer.ggml.eos_token_id"] == (EOS, U32)
    assert md["tokenizer.ggml.padding_token_id"] == (PAD, U32)
    assert md["tokenizer.ggml.add_bos_token"] == (True, BOOL)
    assert md["tokenizer.ggml.add_eos_token"] == (False, BOOL)
    assert md["tokenizer.chat_template"] == (CHAT_TEMPLATE, STR)



@pytest.fixture(scope="module")
def llama3_bpe(tmp_path_factory):
    """A tiny qwen2 checkpoint with the Llama 3.2 BPE tokenizer (and a chat template), converted."""
    root = tmp_path_factory.mktemp("bpe")
    folder = make_checkpoint(root / "hf", "qwen2", tokenizer="llama3")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder, convert(folder, root / "bpe.gguf", type="q4_0", progress=False)


def test_bpe_vocabulary_round_trips(llama3_bpe):
    folder, out = llama3_bpe
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    md = GGUFFile(out).metadata  # gguf-py's reader takes long on 128k tokens; ours does not
    tokens = md["tokenizer.ggml.tokens"]
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == "llama-bpe"  # recognised by llama.cpp's tokenizer hash
    assert len(tokens) == LLAMA3_VOCAB
    assert all(tokens[i] == token for token, i in tokenizer["model"]["vocab"].items())
    assert all(tokens[t["id"]] == t["content"] for t in tokenizer["added_tokens"])
    assert md["tokenizer.ggml.merges"] == tokenizer["model"]["merges"]
    types = md["tokenizer.ggml.token_type"]
    assert types[128000] == TokenType.CONTROL and types[1000] == TokenType.NORMAL
    assert md["tokenizer.ggml.bos_token_id"] == 128000  # <|begin_of_text|>
    assert md["tokenizer.ggml.eos_token_id"] == 128001  # <|end_of_text|>
    assert md["tokenizer.ggml.add_bos_token"] is True  # from the TemplateProcessing post-processor
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_tiktoken_tokenizer_model_next_to_tokenizer_json_is_not_taken_for_sentencepiece(tmp_path, llama3_bpe):
    folder = tmp_path / "hf"
    shutil.copytree(llama3_bpe[0], folder)
    from test_convert_checkpoints import llama3_tokenizer_dir

    shutil.copy(llama3_tokenizer_dir() / "tokenizer.model", folder)  # tiktoken ranks, not protobuf
    out = convert(folder, tmp_path / "t.gguf", type="q8_0", dry_run=True)
    assert out == tmp_path / "t.gguf"  # planned with tokenizer.json; nothing written
    assert not out.exists()


# --- other layouts of the same models ----------------------------------------------------------

def test_sharded_checkpoint_converts_like_a_single_file(checkpoints, converted, tmp_path):
    folder = tmp_path / "sharded"
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(checkpoints["qwen3"])
    model.save_pretrained(folder, max_shard_size="100KB")
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(checkpoints["qwen3"] / name, folder)
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 1
    out = GGUFFile(convert(folder, tmp_path / "s.gguf", type="q8_0", progress=False))
    single = converted("qwen3", "q8_0")
    assert list(out.tensors) == list(single.tensors)
    for name, t in out.tensors.items():
        assert t.data.tobytes() == single.tensors[name].data.tobytes(), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_widen_exactly(tmp_path, dtype):
    folder = make_checkpoint(tmp_path / dtype, "llama", dtype=getattr(torch, dtype))
    hf, cfg = hf_tensors(folder), read_config(folder)
    out = GGUFFile(convert(folder, tmp_path / "w.gguf", type="f32", progress=False))
    for name, t in out.tensors.items():
        assert np.array_equal(gguf_values(t), expected_hf_values("llama", name, hf, cfg)), name


def test_gemma3_conditional_generation_converts_its_text_model(tmp_path):
    transformers = importlib.import_module("transformers")
    folder = tmp_path / "mm"
    text = make_checkpoint(tmp_path / "text", "gemma3")
    text_cfg = transformers.Gemma3TextConfig.from_pretrained(text)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    model = transformers.Gemma3ForConditionalGeneration(
        transformers.Gemma3Config(text_config=text_cfg, vision_config=vision, mm_tokens_per_image=4))
    model.model.language_model.load_state_dict(
        transformers.AutoModelForCausalLM.from_pretrained(text).model.state_dict())
    model.save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(text / name, folder)
    mm = GGUFFile(convert(folder, tmp_path / "mm.gguf", type="f16", progress=False))
    plain = GGUFFile(convert(text, tmp_path / "text.gguf", type="f16", progress=False))
    assert set(mm.tensors) == set(plain.tensors)  # the vision tower is left out
    for name, t in mm.tensors.items():
        assert t.data.tobytes() == plain.tensors[name].data.tobytes(), name


def test_mistral_is_converted_as_llama(tmp_path):
    folder = make_checkpoint(tmp_path / "m", "mistral")
    out = GGUFFile(convert(folder, tmp_path / "m.gguf", type="f32", progress=False))
    hf, cfg = hf_tensors(folder), read_config(folder)
    assert out.metadata["general.architecture"] == "llama"
    for name, t in out.tensors.items():
        assert np.array_equal(gguf_values(t), expected_hf_values("llama", name, hf, cfg)), name


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    folder = make_checkpoint(tmp_path / "tied", "qwen2", tie_word_embeddings=True)
    out = GGUFFile(convert(folder, tmp_path / "tied.gguf", type="q8_0", progress=False))
    assert "output.weight" not in out.tensors and "token_embd.weight" in out.tensors


def test_llama3_rope_scaling_becomes_a_rope_freqs_tensor(tmp_path):
    scaling = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    folder = make_checkpoint(tmp_path / "l3", "llama", rope_parameters=scaling)
    out = GGUFFile(convert(folder, tmp_path / "l3.gguf", type="q8_0", progress=False))
    freqs = out.tensors["rope_freqs.weight"]
    assert freqs.ggml_type == Q.F32 and freqs.shape == (8,)  # head_dim / 2
    factors = gguf_values(freqs)
    assert factors[0] == 1.0 and factors[-1] == 32.0  # high frequencies kept, low ones scaled
    assert out.metadata["llama.rope.freq_base"] == 500000.0


def test_linear_rope_scaling_is_recorded(tmp_path):
    scaling = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    folder = make_checkpoint(tmp_path / "lin", "gemma3", rope_parameters=scaling)
    md = GGUFFile(convert(folder, tmp_path / "lin.gguf", type="q8_0", progress=False)).metadata
    assert md["gemma3.rope.scaling.type"] == "linear"
    assert md["gemma3.rope.scaling.factor"] == 8.0


def test_gemma3_layer_pattern_other_than_five_to_one_is_written(tmp_path):
    folder = make_checkpoint(tmp_path / "g", "gemma3", num_hidden_layers=4,
                             layer_types=["sliding_attention", "full_attention"] * 2)
    md = GGUFFile(convert(folder, tmp_path / "g.gguf", type="q8_0", progress=False)).metadata
    assert md["gemma3.attention.sliding_window_pattern"] == 2


# --- dry run and command line ------------------------------------------------------------------

def test_dry_run_lists_every_tensor_and_writes_nothing(checkpoints, tmp_path, capsys):
    out = convert(checkpoints["qwen2"], tmp_path / "d.gguf", type="q4_0", dry_run=True)
    listing = capsys.readouterr().out
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "blk.1.attn_q.bias" in listing and "{64, 128}" in listing and "Q4_0" in listing
    assert "token_embd.weight" in listing and "Q8_0" in listing
    assert len(listing.splitlines()) == 1 + len(expected_names("qwen2", 2)) + 1  # header, rows, total


def test_cli_flags_and_run(checkpoints, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(checkpoints["qwen3"]), str(tmp_path / "c.gguf"), "--type", "q5_0",
                              "--keep-embeddings", "f16", "--no-progress"])
    assert run(args) == 0
    out = GGUFFile(tmp_path / "c.gguf")
    assert out.tensors["blk.0.ffn_up.weight"].ggml_type == Q.Q5_0
    assert out.tensors["token_embd.weight"].ggml_type == Q.F16
    assert "c.gguf" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["src", "out", "--type", "q3_k"])
