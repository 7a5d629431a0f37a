"""The names `edgellm convert`'s flags accept, with nothing imported: the CLI builds its parser
from these before it knows the command, so that `edgellm run` does not load the converters
(the gguf package, the quantizers: 3 MiB of a run's memory).
quantize.py, sparsity.py and calibrate.py take them from here."""

OUTPUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0")  # --type
EMBEDDING_TYPES = ("f16", "q8_0")  # --keep-embeddings
METHODS = ("sparsegpt", "wanda", "magnitude")  # --method; the first is the default
SPARSE_LAYOUTS = ("compact", "dense")  # --sparse-layout: edgellm.sparse.LAYOUTS, what the runtime reads
# sparsegpt's H = sum x x^T has rank at most the token count, so it wants more tokens than a
# layer has inputs (Gemma-3-270M's ffn_down: 2048): on it, 2048 -> 8192 tokens took the q4_0
# 2:4 perplexity on GPL-3 from 39.2 to 29.0 (benchmarks/README.md).
DEFAULT_CALIB_TOKENS = 8192  # --calib-tokens
