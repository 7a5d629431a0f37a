"""edgellm: a CPU-first local LLM runtime for GGUF models."""

import os as _os


def _numba_cache_dir() -> str:
    """A per-user folder for Numba's compiled kernels, one per version of their source.

    Numba's default cache lives next to the source, which is read-only in a system site-packages.
    And Numba checks only the file of a cached function for changes, not the files of what it
    calls: a kernel calling an edited team.py or simd.py would keep its old machine code. So the
    folder is named after a digest of all the compiled code's source (edgellm/ and kernels/,
    ~1 ms to read): any edit, upgrade or checkout compiles afresh. Folders of other versions
    unused for a day are removed.
    """
    import hashlib
    import shutil
    import time

    here = _os.path.dirname(_os.path.abspath(__file__))
    folders = [here]
    try:  # the kernels install as edgellm.kernels; in a source checkout they sit in ../kernels
        from importlib.util import find_spec

        spec = find_spec("edgellm.kernels")
        folders += list(spec.submodule_search_locations or []) if spec else []
    except (ImportError, ValueError):
        pass
    digest = hashlib.sha1("|".join(_os.environ.get(k, "") for k in ("EDGELLM_NO_AVX512", "EDGELLM_GENERIC_SIMD")).encode())  # kernels.simd: other code
    for folder in folders:
        for name in sorted(_os.listdir(folder)):
            if name.endswith(".py"):
                with open(_os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    root = _os.path.join(_os.environ.get("XDG_CACHE_HOME") or _os.path.expanduser("~/.cache"), "edgellm", "numba")
    current = _os.path.join(root, digest.hexdigest()[:16])
    try:
        for name in _os.listdir(root):
            other = _os.path.join(root, name)
            if other != current and time.time() - _os.path.getmtime(other) > 86400:
                shutil.rmtree(other, ignore_errors=True)
    except OSError:
        pass
    return current


if "NUMBA_CACHE_DIR" not in _os.environ:
    _os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    import sys as _sys

    if "numba" in _sys.modules:  # imported before us: it read the environment already
        _sys.modules["numba"].config.CACHE_DIR = _os.environ["NUMBA_CACHE_DIR"]

__version__ = "0.1.0"


def load(path=None, threads=None, ctx=4096, kv_type="f16", on_compile=None):
    """Open a GGUF model (None: the bundled default model). See edgellm.llm.LLM."""
    from edgellm.llm import LLM  # imported here so that `import edgellm` stays cheap

    return LLM(path, threads=threads, ctx=ctx, kv_type=kv_type, on_compile=on_compile)
