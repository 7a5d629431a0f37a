"""Converters: Hugging Face checkpoints and GGUF files in, GGUF files out.

    from edgellm.converters import convert, ConvertError
    convert("path/to/hf-folder", "model-q8_0.gguf", type="q8_0")

convert.py orchestrates; hf.py reads checkpoints (config, safetensors shards, per-architecture
tensor maps); vocab.py turns tokenizers into metadata; quantize.py picks and produces tensor
types; writer.py streams the result to a temporary file and renames it; cli.py holds the flags.
"""

from edgellm.converters.convert import convert
from edgellm.converters.errors import ConvertError, LossySourceWarning

__all__ = ["convert", "ConvertError", "LossySourceWarning"]
