"""Bad input to `edgellm convert`: each case is refused with a one-line ConvertError, and nothing is
left behind (no OUT, no temporary file)."""

from __future__ import annotations

import importlib

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_convert_checkpoints import checkpoints, llama3_tokenizer_dir  # noqa: F401 (fixture)

from edgellm.converters import ConvertError, convert
from edgellm.converters.writer import TensorPlan
from edgellm.errors import EdgeLLMError


@pytest.fixture
def llama(checkpoints, tmp_path) -> Path:
    """A private copy of the tiny llama checkpoint, free to damage."""
    return Path(shutil.copytree(checkpoints["llama"], tmp_path / "hf"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def refuse(src, out: Path, match: str, **kwargs) -> ConvertError:
    """convert() must raise a one-line ConvertError matching `match` and write nothing."""
    before = set(out.parent.iterdir()) if out.parent.is_dir() else set()
    with pytest.raises(ConvertError, match=match) as caught:
        convert(src, out, progress=False, **kwargs)
    assert "\n" not in str(caught.value)
    if out.parent.is_dir():
        assert set(out.parent.iterdir()) == before
    return caught.value


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_convert_error_is_a_value_error_the_cli_reports(llama, out_dir):
    error = refuse(llama, out_dir / "m.gguf", "unknown output type", type="q3_k")
    assert isinstance(error, ValueError) and isinstance(error, EdgeLLMError)


# --- the source --------------------------------------------------------------------------------

def test_folder_without_config_json(llama, out_dir):
    (llama / "config.json").unlink()
    refuse(llama, out_dir / "m.gguf", "has no config.json")


def test_folder_without_weights(llama, out_dir):
    (llama / "model.safetensors").unlink()
    refuse(llama, out_dir / "m.gguf", r"has no \*\.safetensors weights")


def test_pytorch_bin_weights_are_named_in_the_error(llama, out_dir):
    (llama / "model.safetensors").rename(llama / "pytorch_model.bin")
    refuse(llama, out_dir / "m.gguf", "found pytorch_model.bin: only safetensors")


def test_unsupported_architecture(llama, out_dir):
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    refuse(llama, out_dir / "m.gguf", "unsupported architecture 'GPT2LMHeadModel'")


def test_shape_that_disagrees_with_config(llama, out_dir):
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    refuse(llama, out_dir / "m.gguf", r"mismatched shape: model.layers.0.mlp.gate_proj.weight is \[128, 64\] "
                                      r"but config.json implies \[96, 64\]")


def test_truncated_safetensors(llama, out_dir):
    path = llama / "model.safetensors"
    os.truncate(path, path.stat().st_size - 100)
    refuse(llama, out_dir / "m.gguf", "model.safetensors is truncated: tensor .* ends at byte")


def test_safetensors_with_a_garbage_header(llama, out_dir):
    (llama / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    refuse(llama, out_dir / "m.gguf", "header is not valid JSON")


def test_rope_scaling_without_its_parameters(llama, out_dir):
    config = json.loads((llama / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (llama / "config.json").write_text(json.dumps(config))
    refuse(llama, out_dir / "m.gguf", "yarn RoPE scaling needs a number for original_max_position_embeddings")


def test_unsupported_rope_scaling(llama, out_dir):
    config = json.loads((llama / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
    (llama / "config.json").write_text(json.dumps(config))
    refuse(llama, out_dir / "m.gguf", "RoPE scaling 'longrope' is not supported")


def test_missing_tensor(llama, out_dir):
    tensors = load_safetensors(llama / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_safetensors(llama / "model.safetensors", tensors)
    refuse(llama, out_dir / "m.gguf", "lacks tensor model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor(llama, out_dir):
    tensors = load_safetensors(llama / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.bias"] = np.zeros(128, np.float32)
    save_safetensors(llama / "model.safetensors", tensors)
    refuse(llama, out_dir / "m.gguf", "unexpected tensor model.layers.0.mlp.up_proj.bias")


def test_integer_quantized_weights(llama, out_dir):
    tensors = load_safetensors(llama / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((128, 64), np.int8)
    save_safetensors(llama / "model.safetensors", tensors)
    refuse(llama, out_dir / "m.gguf", "is I8; only F32, F16 and BF16")


def test_missing_shard(llama, out_dir):
    names = load_safetensors(llama / "model.safetensors")
    index = {"weight_map": {n: "model-00002-of-00002.safetensors" if "layers.1" in n else "model.safetensors"
                            for n in names}}
    (llama / "model.safetensors.index.json").write_text(json.dumps(index))
    refuse(llama, out_dir / "m.gguf", "shard model-00002-of-00002.safetensors .* is missing")


def test_no_tokenizer(llama, out_dir):
    (llama / "tokenizer.model").unlink()
    refuse(llama, out_dir / "m.gguf", "has no tokenizer")


def test_tokenizer_larger_than_the_embeddings(llama, out_dir):
    (llama / "tokenizer.model").unlink()
    shutil.copy(llama3_tokenizer_dir() / "tokenizer.json", llama)
    refuse(llama, out_dir / "m.gguf", "tokenizer.json has token id 128256 but the model's vocab_size is 320")


def test_unknown_bpe_pre_tokenizer(llama, out_dir):
    tokenizers = importlib.import_module("tokenizers")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a made-up byte-level tokenizer nobody has hashed"] * 10, trainer)
    (llama / "tokenizer.model").unlink()
    bpe.save(str(llama / "tokenizer.json"))
    refuse(llama, out_dir / "m.gguf", "unknown BPE pre-tokenizer")


def test_no_such_source(tmp_path, out_dir):
    refuse(tmp_path / "nowhere", out_dir / "m.gguf", "no such file or folder")


def test_file_that_is_not_gguf(llama, out_dir):
    refuse(llama / "tokenizer.model", out_dir / "m.gguf", "not a GGUF file")


def test_safetensors_file_instead_of_its_folder(llama, out_dir):
    refuse(llama / "model.safetensors", out_dir / "m.gguf", "pass the checkpoint folder")


def test_hub_repo_id_offline_and_not_cached(out_dir, monkeypatch):
    importlib.import_module("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(out_dir)
    refuse("edgellm-tests/not-a-real-repo", out_dir / "m.gguf", "not in the Hugging Face cache .*HF_HUB_OFFLINE")


def test_unknown_keep_embeddings(llama, out_dir):
    refuse(llama, out_dir / "m.gguf", "--keep-embeddings must be one of f16, q8_0", keep_embeddings="q4_0")


# --- the output --------------------------------------------------------------------------------

def test_out_equal_to_a_gguf_source(llama, tmp_path):
    gguf = convert(llama, tmp_path / "m.gguf", type="f16", progress=False)
    data = gguf.read_bytes()
    refuse(gguf, gguf, "is the source")
    refuse(gguf, tmp_path / "." / "m.gguf", "is the source")
    assert gguf.read_bytes() == data


def test_out_equal_to_a_file_of_the_source_folder(llama):
    config = (llama / "config.json").read_bytes()
    refuse(llama, llama / "config.json", "is the source")
    assert (llama / "config.json").read_bytes() == config


def test_out_is_a_folder(llama, out_dir):
    refuse(llama, out_dir, "is a folder; give a file name")


def test_out_folder_missing(llama, out_dir):
    refuse(llama, out_dir / "missing" / "m.gguf", "folder .*missing does not exist")


def test_out_under_a_file(llama, out_dir):
    (out_dir / "file").write_text("")
    refuse(llama, out_dir / "file" / "m.gguf", "does not exist")


def test_out_folder_not_writable(llama, out_dir, monkeypatch):
    out_dir.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the OS's answer be "no" as it is for users
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out_dir else real_access(p, mode))
    try:
        refuse(llama, out_dir / "m.gguf", "is not writable")
    finally:
        out_dir.chmod(0o755)


def test_interrupt_midway_leaves_no_partial_file_and_the_old_out_intact(llama, out_dir, monkeypatch):
    out = out_dir / "m.gguf"
    out.write_bytes(b"the previous conversion")
    calls, encoded = [], TensorPlan.encoded

    def interrupted(self):
        calls.append(self.name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl+C in the middle of the tensor data
        return encoded(self)

    monkeypatch.setattr(TensorPlan, "encoded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(llama, out, progress=False)
    assert out.read_bytes() == b"the previous conversion"
    assert [p.name for p in out_dir.iterdir()] == ["m.gguf"]


def test_write_error_midway_is_a_convert_error_and_leaves_nothing(llama, out_dir, monkeypatch):
    from gguf import GGUFWriter

    def disk_full(self, tensor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", disk_full)
    refuse(llama, out_dir / "m.gguf", "writing .*m.gguf failed: No space left on device")
