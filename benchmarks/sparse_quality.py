"""2:4 sparsity on the real Gemma-3-270M: perplexity of each pruning method, 4- and 8-bit.

The Hugging Face checkpoint is the one tests/test_convert_roundtrip.py makes from the bundled GGUF
(transformers dequantizes it; run that test once, it keeps the folder in pytest's cache). Each
variant is converted with `edgellm.converters.convert` (calibrated on --calib, a text other than
the one evaluated) and scored with `edgellm perplexity`'s protocol (chunks of 512, second half of
each chunk scored) on ../shared/reference/texts/GPL-3.txt. Results go to stdout as a markdown
table and, one JSON line per variant as it finishes, to --log.

    python benchmarks/sparse_quality.py [--only q4_0-sparsegpt,...] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import edgellm
from edgellm.converters import convert
from edgellm.perplexity import perplexity

REPO = Path(__file__).resolve().parents[1]
HF = REPO / ".pytest_cache" / "d" / "gemma3-270m-hf-253113024"
TEXT = REPO.parent / "shared" / "reference" / "texts" / "GPL-3.txt"
# Calibration: other licenses than the GPL (Debian's common-licenses), 12k tokens together.
CALIB_PARTS = [Path("/usr/share/common-licenses") / n for n in ("GFDL-1.3", "Apache-2.0", "MPL-2.0", "Artistic")]

# label -> convert() arguments besides src/out
VARIANTS = {}
for t in ("q4_0", "q8_0"):
    VARIANTS[f"{t}-dense"] = dict(type=t)
    for method in ("magnitude", "wanda", "sparsegpt"):
        VARIANTS[f"{t}-{method}"] = dict(type=t, sparsity="2:4", method=method)
VARIANTS["q4_0-sparsegpt-dense-first-last"] = dict(type="q4_0", sparsity="2:4", method="sparsegpt", dense="0,17")
VARIANTS["q4_0-sparsegpt-dense-attn"] = dict(type="q4_0", sparsity="2:4", method="sparsegpt", dense="attn")
VARIANTS["q4_0-sparsegpt-dense-down"] = dict(type="q4_0", sparsity="2:4", method="sparsegpt", dense="ffn_down")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, default=HF, help="Gemma-3-270M HF checkpoint folder")
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--calib", type=Path, default=None, help="default: the licenses in CALIB_PARTS, joined")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated labels (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgellm-sparse-quality"))
    ap.add_argument("--log", type=Path, default=Path("/tmp/edgellm-sparse-quality/results.jsonl"))
    args = ap.parse_args()
    if not (args.hf / "config.json").is_file():
        raise SystemExit(f"no checkpoint at {args.hf}: run `pytest tests/test_convert_roundtrip.py` once")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.calib is None:
        args.calib = args.work / "calibration.txt"
        args.calib.write_text("".join(p.read_text() for p in CALIB_PARTS))
    text = args.text.read_text()
    labels = args.only.split(",") if args.only else list(VARIANTS)
    rows = []
    for label in labels:
        kwargs = dict(VARIANTS[label])
        if kwargs.get("method") in ("wanda", "sparsegpt"):
            kwargs.update(calib=args.calib, calib_tokens=args.calib_tokens)
        out = args.work / f"gemma3-270m-{label}.gguf"
        t0 = time.perf_counter()
        convert(args.hf, out, progress=False, **kwargs)
        convert_s = time.perf_counter() - t0
        llm = edgellm.load(out, threads=args.threads, ctx=args.ctx)
        result = perplexity(llm, text, args.ctx)
        row = {"label": label, "ppl": result.ppl, "err": result.error, "mib": out.stat().st_size / 2**20,
               "convert_s": convert_s, **{k: str(v) for k, v in kwargs.items()}}
        rows.append(row)
        with open(args.log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{label}: PPL {result.ppl:.4f} ± {result.error:.4f}, {row['mib']:.1f} MiB, "
              f"converted in {convert_s:.0f} s", flush=True)
    print("\n| variant | PPL (GPL-3, c=512) | file MiB | convert s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['ppl']:.3f} ± {r['err']:.3f} | {r['mib']:.1f} | {r['convert_s']:.0f} |")


if __name__ == "__main__":
    main()
