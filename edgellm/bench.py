"""`edgellm bench`: prefill and decode speed, side by side with llama.cpp in the same run.

One repetition = a fresh context, a prompt of `n_prompt` tokens in one batch (prefill; the first
token is sampled greedily: TTFT), then `n_gen` tokens decoded one at a time (each one's time is a
TPOT sample). Engines alternate repetition by repetition after one warm-up each, so that a busy
or throttled machine slows both alike; each figure is the median over repetitions.

llama.cpp runs through llama-cpp-python (the `bench` extra) in a child process, so that each
engine's peak RSS is its own. If llama.cpp's default CPU buffers (repacked or AMX weights) die on
this CPU (a VM advertising AMX it cannot run gets SIGILL), the child is restarted with plain
buffers and the result says so.

Achieved GB/s = bytes of weights one decoded token reads x decode tokens/s, against the read
bandwidth of this machine measured with the same thread count.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgellm.errors import EdgeLLMError

KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_s", "tpot_median_s", "tpot_p95_s", "peak_rss_mb", "gb_per_s")


@dataclass
class Rep:
    """One repetition's timings, seconds."""
    prefill_s: float
    ttft_s: float
    tpot_s: list[float]


def prompt_ids(n_vocab: int, n_prompt: int, bos: int | None) -> list[int]:
    """The same pseudo-random prompt for both engines (llama-bench also times random tokens)."""
    rng = np.random.default_rng(1234)
    ids = rng.integers(100, min(n_vocab, 32000), size=n_prompt).tolist()
    if bos is not None and n_prompt:
        ids[0] = bos
    return ids


def time_one(eval_tokens, ids: list[int], n_gen: int) -> Rep:
    """eval_tokens(ids, fresh) -> last logits; greedy decoding."""
    t0 = time.perf_counter()
    logits = eval_tokens(ids, True)
    prefill = time.perf_counter() - t0
    token = int(np.argmax(logits))
    ttft = time.perf_counter() - t0
    tpot = []
    for _ in range(n_gen):
        t = time.perf_counter()
        token = int(np.argmax(eval_tokens([token], False)))
        tpot.append(time.perf_counter() - t)
    return Rep(prefill, ttft, tpot)


def summarize(reps: list[Rep], n_prompt: int, bytes_per_token: int, peak_rss_mb: float) -> dict:
    tpots = [t for r in reps for t in r.tpot_s]
    decode_tok_s = float(np.median([len(r.tpot_s) / sum(r.tpot_s) for r in reps])) if tpots else 0.0
    return {
        "prefill_tok_s": float(np.median([n_prompt / r.prefill_s for r in reps])) if n_prompt else 0.0,
        "decode_tok_s": decode_tok_s,
        "ttft_s": float(np.median([r.ttft_s for r in reps])),
        "tpot_median_s": float(np.median(tpots)) if tpots else 0.0,
        "tpot_p95_s": float(np.percentile(tpots, 95)) if tpots else 0.0,
        "peak_rss_mb": peak_rss_mb,
        "gb_per_s": bytes_per_token * decode_tok_s / 1e9,
    }


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decode step reads: every matrix once (the embedding lookup reads one
    row, nothing next to the rest)."""
    return sum(layer.sparse.nbytes if layer.sparse is not None else layer.weight.data.nbytes
               for layer in model.linear_layers())


class EdgeEngine:
    name = "edgellm"

    def __init__(self, model_path, threads, n_ctx, kv_type="f16", on_compile=None):
        from edgellm.llm import LLM

        self.llm = LLM(model_path, threads=threads, ctx=n_ctx, kv_type=kv_type, on_compile=on_compile)
        self.bytes_per_token = weight_bytes_per_token(self.llm.model)

    def eval_tokens(self, ids, fresh):
        if fresh:
            self.llm.kv_cache.clear()
        return self.llm._eval(np.asarray(ids, np.int64), all_logits=False)[-1]

    def rep(self, ids, n_gen) -> Rep:
        return time_one(self.eval_tokens, ids, n_gen)

    def peak_rss_mb(self) -> float:
        from edgellm.system import peak_rss_mb

        return peak_rss_mb()


class LlamaCppEngine:
    """llama.cpp in a child process (this module run as a script), one JSON line per request."""

    name = "llama.cpp"

    def __init__(self, model_path, threads, n_ctx):
        self.args = [str(model_path), str(threads), str(n_ctx)]
        self.plain_buffers = False
        self._start()
        try:
            self._request({"op": "rep", "ids": [1, 2, 3], "n_gen": 2})  # crashes here if AMX is fake
        except EdgeLLMError:
            self.close()
            self.plain_buffers = True
            self._start()

    def _start(self):
        from edgellm.kernels import foreign_environ

        cmd = [sys.executable, "-m", "edgellm.bench", "--llama-cpp-worker", *self.args]
        if self.plain_buffers:
            cmd.append("--plain-buffers")
        # The user's environment, not edgellm's OpenMP default (kernels.foreign_environ).
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=foreign_environ())
        ready = self.proc.stdout.readline()
        if not ready:
            raise EdgeLLMError(f"llama.cpp could not load the model: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        try:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        except (OSError, ValueError):
            err = ""
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def _request(self, req: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait()
            raise EdgeLLMError(f"llama.cpp worker died: {self._stderr_tail()}")
        return json.loads(line)

    def rep(self, ids, n_gen) -> Rep:
        return Rep(**self._request({"op": "rep", "ids": ids, "n_gen": n_gen}))

    def peak_rss_mb(self) -> float:
        return self._request({"op": "rss"})["peak_rss_mb"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def open_llama_cpp(model_path, plain_buffers: bool, **kwargs):
    """llama_cpp.Llama for model_path. plain_buffers: weights in plain CPU buffers instead of
    llama.cpp's "extra" (repacked/AMX) ones, which die with SIGILL on VMs that advertise AMX
    without enabling it; they compute the same model."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = not plain_buffers
        return p

    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(model_path), verbose=False, **kwargs)
    finally:
        lib.llama_model_default_params = default


def _llama_cpp_worker(model_path: str, threads: int, n_ctx: int, plain_buffers: bool) -> None:
    import resource

    llm = open_llama_cpp(model_path, plain_buffers, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                         n_threads=threads, n_threads_batch=threads)

    def eval_tokens(ids, fresh):
        if fresh:
            llm.reset()
        llm.eval(ids)
        return llm.scores[llm.n_tokens - 1]

    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "rep":
            print(json.dumps(asdict(time_one(eval_tokens, req["ids"], req["n_gen"]))), flush=True)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            print(json.dumps({"peak_rss_mb": peak / (1024 * 1024 if sys.platform == "darwin" else 1024)}), flush=True)


def bench(model_path, n_prompt=512, n_gen=128, threads=None, reps=3, vs_llama_cpp=False, progress=None,
          kv_type="f16") -> dict:
    """Run the benchmark; returns the JSON object `edgellm bench --json` prints. kv_type: edgellm's
    KV cache (llama.cpp keeps its default, f16)."""
    from edgellm.default_model import default_model_path
    from edgellm.system import physical_cores, read_bandwidth_gb_s

    if n_prompt < 1 or n_gen < 1 or reps < 1:
        raise EdgeLLMError("-p, -n and -r must be at least 1")
    model_path = os.fspath(model_path or default_model_path())
    threads = threads or physical_cores()
    n_ctx = n_prompt + n_gen + 8
    say = progress or (lambda msg: None)

    # Looked up, not imported: the child process needs it, and importing it here would add its
    # module and libraries (~8 MiB) to this process's peak RSS, which is edgellm's figure.
    if vs_llama_cpp and importlib.util.find_spec("llama_cpp") is None:
        raise EdgeLLMError("--vs-llama-cpp needs llama-cpp-python: pip install 'edgellm[bench]'")
    notice = lambda: say("compiling kernels (first run only)...")  # noqa: E731
    engines = [EdgeEngine(model_path, threads, n_ctx, kv_type, on_compile=notice)]
    if vs_llama_cpp:
        engines.append(LlamaCppEngine(model_path, threads, n_ctx))
    ours = engines[0]
    tok = ours.llm.tokenizer
    ids = prompt_ids(ours.llm.hparams.n_vocab, n_prompt, tok.bos_id if tok is not None else None)

    results = {e.name: [] for e in engines}
    try:
        for e in engines:  # warm-up: compiled code, page cache, allocator
            say(f"warm-up: {e.name}")
            e.rep(ids[: min(32, n_prompt)], 4)
        for r in range(reps):
            for e in engines:
                say(f"repetition {r + 1}/{reps}: {e.name}")
                results[e.name].append(e.rep(ids, n_gen))
        summaries = {e.name: summarize(results[e.name], n_prompt, ours.bytes_per_token, e.peak_rss_mb()) for e in engines}
    finally:
        for e in engines[1:]:
            e.close()

    out = {
        "model": model_path, "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
        "kv_type": ours.llm.kv_cache.kv_type,  # the cache it ran with
        "bytes_per_token": ours.bytes_per_token, "file_mb": os.path.getsize(model_path) / 2**20,
        **summaries["edgellm"],
        "bandwidth_gb_per_s": read_bandwidth_gb_s(threads),
    }
    if vs_llama_cpp:
        theirs = summaries["llama.cpp"]
        out["llama_cpp"] = {**theirs, "plain_buffers": engines[1].plain_buffers}
        out["ratio"] = {k: (out[k] / theirs[k] if theirs[k] else None) for k in KEYS}
    return out


def format_table(r: dict) -> str:
    rows = [
        ("prefill tok/s", "prefill_tok_s", "{:.1f}"), ("decode tok/s", "decode_tok_s", "{:.1f}"),
        ("TTFT s", "ttft_s", "{:.3f}"), ("TPOT median ms", "tpot_median_s", "{:.2f}"),
        ("TPOT p95 ms", "tpot_p95_s", "{:.2f}"), ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
        ("achieved GB/s", "gb_per_s", "{:.1f}"),
    ]
    theirs = r.get("llama_cpp")
    head = f"{'':16s}{'edgellm':>12s}" + (f"{'llama.cpp':>12s}{'ratio':>8s}" if theirs else "")
    lines = [f"{os.path.basename(r['model'])}: {r['threads']} threads, prompt {r['n_prompt']}, "
             f"generate {r['n_gen']}, {r['reps']} repetitions (medians)", head]
    for label, key, fmt in rows:
        scale = 1000.0 if label.endswith(" ms") else 1.0
        line = f"{label:16s}{fmt.format(r[key] * scale):>12s}"
        if theirs:
            ratio = r["ratio"][key]
            line += f"{fmt.format(theirs[key] * scale):>12s}{(f'{ratio:.2f}x' if ratio else '-'):>8s}"
        lines.append(line)
    lines.append(f"weights read per token {r['bytes_per_token'] / 1e6:.0f} MB; memory read bandwidth "
                 f"{r['bandwidth_gb_per_s']:.1f} GB/s ({r['threads']} threads)")
    if theirs and theirs.get("plain_buffers"):
        lines.append("llama.cpp ran with plain CPU buffers: its repacked/AMX buffers crashed on this CPU")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) >= 5 and sys.argv[1] == "--llama-cpp-worker":
    _llama_cpp_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "--plain-buffers" in sys.argv)
