"""The second process of a fresh install's compile (kernels/team.py: the team's serve, woke, the
job code of the model's weight types and the repacking kernels into numba's disk cache), started
by a front end as soon as its flags are checked: before the ~0.5 s of importing numba and the
kernels that an exact look at numba's cache takes. Whether the install is fresh is read from a
marker file that a run writes into the cache folder once its kernels are ready (LLM); a wrong
guess costs only time either way (a process that finds serve cached and ends, or the start at
load, as without this).

    start_early(model_path)     start it now if the marker is missing and model_path is a GGUF file
    take_early()                the process start_early started, if any: the team's to wait for
    spawn()                     start one (the team's own start, at load, uses it too)
    send_types(process, types)  the model's weight types, whose job code it compiles after serve
    mark_compiled()             write the marker
"""

from __future__ import annotations

import os
import subprocess
import sys

# sys.path[0] of `python -c` is the current folder: in a source checkout its edgellm/ would
# shadow the installed package (whose kernels are edgellm.kernels), so it goes (as with -P).
COMMAND = "import sys; del sys.path[0]; from edgellm.compile_ahead import compile_team_code; compile_team_code()"
MARKER = "kernels-compiled"
_early: list = []


def compile_team_code() -> None:
    """What the process runs: one at a time per cache folder (a lock file), so that runs started
    together on a fresh install (or one whose file then proves broken) compile once; the others
    wait, then find the code in the cache."""
    import fcntl

    folder = os.environ.get("NUMBA_CACHE_DIR", ".")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "compile.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from edgellm.kernels import jobs
        from edgellm.kernels.dispatch import load_repack_code
        from edgellm.kernels.team import load_team_code

        load_team_code()
        jobs.use_weight_types(int(t) for t in sys.stdin.readline().split() if t.isdigit())  # send_types
        jobs.load_weight_code()
        load_repack_code()


def _marker() -> str:
    return os.path.join(os.environ.get("NUMBA_CACHE_DIR", ""), MARKER)


def has_gguf_magic(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except (OSError, TypeError):
        return False


def spawn() -> subprocess.Popen | None:
    """The compile process, started (None if no process can start: serve then compiles in the
    caller's process when first called)."""
    try:
        return subprocess.Popen([sys.executable, "-c", COMMAND], env=os.environ.copy(), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def send_types(process, ggml_types) -> None:
    """Tell the process which weight types the model has (one line on its stdin, read once serve
    is compiled; closed after it: a process whose caller sends none, or ends, reads nothing)."""
    pipe = getattr(process, "stdin", None)
    if pipe is None or pipe.closed:
        return
    try:
        pipe.write(" ".join(str(int(t)) for t in ggml_types).encode() + b"\n")
        pipe.close()
    except (OSError, ValueError):  # the process has ended
        pass


def start_early(model_path) -> None:
    if _early or os.path.exists(_marker()):
        return
    if model_path is None:
        from edgellm.default_model import default_model_path
        from edgellm.errors import EdgeLLMError

        try:
            model_path = default_model_path()
        except EdgeLLMError:  # the load that follows says what is wrong
            return
    if has_gguf_magic(model_path):
        process = spawn()
        if process is not None:
            _early.append(process)


def take_early() -> subprocess.Popen | None:
    return _early.pop() if _early else None


def mark_compiled() -> None:
    try:
        with open(_marker(), "a"):
            pass
    except OSError:  # a read-only cache: the next run looks at numba's cache itself
        pass
