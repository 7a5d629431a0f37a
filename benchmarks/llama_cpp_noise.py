"""How far llama.cpp's outputs on the bundled Gemma-3-270M move when only its rounding changes,
next to how far edgellm's are from them: the noise floor for the fidelity checks of the core
issue (teacher-forced top-1 agreement, perplexity, the first 16 greedy tokens).

llama.cpp is run twice, in one process, on the same file with the same 2 threads: with its
default CPU buffers (Q4_K weights repacked for its AVX2/AVX-512 GEMM, which is how the
reference in ../shared/reference was made) and with plain buffers (the same weights, the same
8-bit activation quantization, a different order of float additions). Each is scored like the
tests score edgellm:

- teacher: one batch over the reference's 512 GPL-3 tokens; top-1 agreement with the reference's
  argmax, ppl_all, RMS logit difference to the reference build;
- greedy: the 4 reference prompts, greedy, 16 tokens, one token per decode call (as generated);
- batch vs incremental: each prompt's reference continuation scored in one batch, and where the
  batch argmax leaves llama.cpp's own greedy tokens.

Needs llama-cpp-python (the `bench` extra):

    pip install -e '.[model,bench]' && python benchmarks/llama_cpp_noise.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import edgellm
from edgellm.bench import open_llama_cpp
from edgellm.default_model import default_model_path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gemma3-270m-q4_k_m.json"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def first_split(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


class LlamaCpp:
    def __init__(self, path, plain: bool):
        self.llm = open_llama_cpp(path, plain, n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=2,
                                  n_threads_batch=2, logits_all=True)

    def logits(self, ids) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids, n) -> list[int]:
        self.llm.reset()
        self.llm.eval(list(ids))
        out = []
        for _ in range(n):
            out.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            self.llm.eval([out[-1]])
        return out


class Edge:
    def __init__(self, path):
        self.llm = edgellm.load(path, threads=2, ctx=1024)

    def logits(self, ids) -> np.ndarray:
        return self.llm.logits(ids)

    def greedy(self, ids, n) -> list[int]:
        list(self.llm.generate(ids, max_tokens=n, temperature=0.0, stop_at_eos=False))
        return self.llm.last_stats.tokens


def main() -> None:
    ref = json.loads(REFERENCE.read_text())
    path = str(default_model_path())
    teacher = ref["teacher"][0]
    ids = teacher["ids"]
    engines = {"llama.cpp default": LlamaCpp(path, False), "llama.cpp plain": LlamaCpp(path, True),
               "edgellm": Edge(path)}
    base = None
    print(f"{'engine':18s} {'top-1':>7s} {'ppl_all':>8s} {'RMS dlogit':>10s}  greedy 16 (prompts matching) "
          "| batch argmax leaves own greedy at")
    for name, engine in engines.items():
        logits = engine.logits(ids)
        base = logits if base is None else base
        top1 = np.mean(logits.argmax(-1) == np.asarray(teacher["argmax"]))
        lp = log_softmax(logits[:-1])
        ppl = float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))
        rms = float(np.sqrt(((logits - base) ** 2).mean()))
        greedy_ok, batch_splits = [], []
        for case in ref["greedy"]:
            own = engine.greedy(case["prompt_ids"], 16)
            greedy_ok.append(own == case["ids"][:16])
            seq = case["prompt_ids"] + own
            batch = engine.logits(seq)[len(case["prompt_ids"]) - 1 : -1].argmax(-1).tolist()
            batch_splits.append(first_split(batch, own))
        print(f"{name:18s} {top1:7.4f} {ppl:8.4f} {rms:10.3f}  {sum(greedy_ok)}/4 {greedy_ok} | "
              f"{['-' if s >= 16 else s for s in batch_splits]}")
    print(f"reference: ppl_all {teacher['ppl_all']:.4f} (llama.cpp default buffers, the build above)")


if __name__ == "__main__":
    sys.exit(main())
