"""Converters: Hugging Face checkpoints and GGUF files in, GGUF files out.

    from edgellm.converters import convert, ConvertError
    convert("path/to/hf-folder", "model-q8_0.gguf", type="q8_0")

pipeline.py orchestrates (convert()); hf.py reads checkpoints (config, safetensors shards,
per-architecture tensor maps); vocab.py turns tokenizers into metadata; quantize.py picks and
produces tensor types; writer.py streams the result to a temporary file and renames it; cli.py
holds the flags, with the names they accept in options.py.
"""

from edgellm.converters.errors import ConvertError, LossySourceWarning

__all__ = ["convert", "ConvertError", "LossySourceWarning"]


def __getattr__(name):
    """convert, imported on first use: the package's light parts (options.py for the CLI's
    flags) load without the converter and the gguf package."""
    if name == "convert":
        from edgellm.converters.pipeline import convert

        return convert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
