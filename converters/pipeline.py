"""`edgellm convert`: a Hugging Face checkpoint or a GGUF file in, a GGUF file out.

    convert(src, out, type="q8_0") -> Path

1. resolve SRC: a local checkpoint folder, a local GGUF file, or a hub repo id (downloaded into
   the Hugging Face cache, or found there when HF_HUB_OFFLINE is set);
2. check OUT before any work: not the source, its folder exists and is writable;
3. plan: metadata into a GGUFWriter, one TensorPlan per tensor (hf.py / gguf_source.py), every
   name and shape checked, then each tensor's output type (quantize.choose_type);
4. list the plan (--dry-run) or stream it to OUT (writer.py, atomic).
Every problem with the input surfaces as a ConvertError before OUT is touched.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from gguf import GGML_QUANT_VERSION, GGUFWriter

from edgellm.converters import calibrate, hf
from edgellm.converters import sparsity as sparsity_mod
from edgellm.converters.errors import ConvertError, LossySourceWarning
from edgellm.converters.gguf_source import gguf_plan, lossy_types, open_gguf
from edgellm.converters.quantize import choose_type, embedding_type, output_type
from edgellm.converters.vocab import add_vocab
from edgellm.converters.writer import TensorPlan, list_plan, write_gguf

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a conversion needs from a hub repo; skips *.bin/*.pth duplicates, images, READMEs.
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.model",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "chat_template.json", "chat_template.jinja"]


def convert(src: str | os.PathLike, out: str | os.PathLike, type: str = "q8_0",
            keep_embeddings: str | None = None, dry_run: bool = False, progress: bool = True,
            sparsity: str | None = None, method: str = sparsity_mod.METHODS[0],
            sparse_layout: str = "compact", dense: str | None = None, calib: str | None = None,
            calib_tokens: int = calibrate.DEFAULT_TOKENS) -> Path:
    """Convert SRC to the GGUF file OUT with tensors of `type`; return OUT's path.

    type: f32, f16, bf16, q8_0, q4_0, q4_1 or q5_0. keep_embeddings: None, "f16" or "q8_0", the
    type of token_embd/output (see quantize.py for the policy). dry_run: print the plan, write
    nothing. Raises ConvertError for bad input; warns (LossySourceWarning) when SRC is a GGUF
    file that is already quantized.

    sparsity: "2:4" (N:M) prunes the block weights with `method` (sparsegpt, wanda or magnitude;
    the first two run the model on `calib_tokens` tokens of the text file `calib`), except the
    layers/tensors `dense` names; sparse_layout: "compact" or "dense" (see sparsity.py).
    """
    qtype, file_type = output_type(type)
    embeddings = embedding_type(keep_embeddings)
    opts = None
    if sparsity is not None:
        n, m = sparsity_mod.parse_sparsity(sparsity)
        opts = sparsity_mod.SparsityOptions(n, m, method, sparse_layout, dense)
        sparsity_mod.check_options(opts, qtype, calib)
    source, name = resolve_source(src)
    out = check_output(out, source)

    if source.is_file():
        writer, tensors = _plan_gguf(source, type)
    else:
        writer, tensors = _plan_hf(source, name)
    for t in tensors:
        t.out_type = choose_type(t.name, t.shape, qtype, embeddings)
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    close = None
    if opts is not None:
        tensors, close = _plan_sparsity(source, tensors, writer, opts, qtype, calib, calib_tokens,
                                        dry_run, progress)

    try:
        if dry_run:
            list_plan(tensors)
        else:
            write_gguf(out, writer, tensors, progress=progress)
    finally:
        if close is not None:
            close()
    return out


def _plan_sparsity(source, tensors, writer, opts, qtype, calib, calib_tokens, dry_run, progress):
    """Calibrate if the method needs it (not for --dry-run), then prune the prunable plans."""
    stats = None
    if opts.method != "magnitude" and not dry_run:
        hessian = opts.method == "sparsegpt"
        stats = calibrate.collect_for_source(source, calib, calib_tokens, hessian,
                                             sparsity_mod.PRUNABLE.match, progress)
    tensors, names, close = sparsity_mod.sparsify(tensors, opts, stats, progress and not dry_run)
    sparsity_mod.add_metadata(writer, opts, qtype, names)
    return tensors, close


def _plan_hf(folder: Path, name: str) -> tuple[GGUFWriter, list[TensorPlan]]:
    model = hf.read_config(folder)
    tensors = hf.tensor_plans(model, hf.open_weights(folder))
    writer = GGUFWriter(path=None, arch=model.arch)
    writer.add_type("model")
    writer.add_name(name)
    hf.add_hparams(writer, model)
    add_vocab(writer, folder, model.n_vocab, model.arch)
    return writer, tensors


def _plan_gguf(path: Path, type: str) -> tuple[GGUFWriter, list[TensorPlan]]:
    source = open_gguf(path)
    lossy = lossy_types(source)
    if lossy:
        warnings.warn(
            f"{path.name} is already quantized ({', '.join(lossy)}): the {type} output keeps that "
            "loss and adds its own; convert the original checkpoint for the best quality",
            LossySourceWarning, stacklevel=3)
    return gguf_plan(source)


def resolve_source(src: str | os.PathLike) -> tuple[Path, str]:
    """(local path of SRC, display name for general.name)."""
    path = Path(src).expanduser()
    if path.is_dir() or path.is_file():
        path = path.resolve()
        return path, path.stem if path.is_file() else path.name
    if path.exists():
        raise ConvertError(f"{src} is neither a file nor a folder")
    if REPO_ID.match(str(src)):
        return download(str(src)), str(src)
    raise ConvertError(f"{src}: no such file or folder")


def download(repo_id: str) -> Path:
    """The hub checkpoint `repo_id` in the local Hugging Face cache, downloaded if need be."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError(f"{repo_id} is not a local path; downloading it needs huggingface-hub "
                           "(pip install huggingface-hub)") from None
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it now so a late setting counts.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as e:  # hub errors, HTTP errors, a missing cache entry: all say "not available"
        if offline:
            raise ConvertError(f"{repo_id} is not a local path and is not in the Hugging Face cache "
                               "(HF_HUB_OFFLINE is set, so it is not downloaded)") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"cannot download {repo_id} from the Hugging Face hub: {reason}") from None


def check_output(out: str | os.PathLike, source: Path) -> Path:
    """OUT as an absolute path, refused when writing it could damage SRC or cannot succeed."""
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise ConvertError(f"OUT {out} is a folder; give a file name, e.g. {out / 'model.gguf'}")
    real = out.resolve()
    same = real == source or (real.exists() and real.samefile(source))
    inside = source.is_dir() and real.parent == source and real.exists() and real.suffix != ".gguf"
    if same or inside:
        raise ConvertError(f"OUT {out} is the source (or one of its files); choose another output file")
    if not out.parent.is_dir():
        raise ConvertError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConvertError(f"cannot write {out}: folder {out.parent} is not writable")
    return out
