"""edgellm: a CPU-first local LLM runtime for GGUF models."""

import os as _os

# Numba caches compiled kernels next to their source by default, which is read-only in a system
# site-packages; keep the cache in a per-user folder instead (compiled once, reused by every run).
_os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    _os.path.join(_os.environ.get("XDG_CACHE_HOME") or _os.path.expanduser("~/.cache"), "edgellm", "numba"),
)

__version__ = "0.1.0"


def load(path=None, threads=None, ctx=4096, kv_type="f32"):
    """Open a GGUF model (None: the bundled default model). See edgellm.llm.LLM."""
    from edgellm.llm import LLM  # imported here so that `import edgellm` stays cheap

    return LLM(path, threads=threads, ctx=ctx, kv_type=kv_type)
