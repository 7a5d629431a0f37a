"""Instructions in each quantized type's decode row loop as LLVM lowers it for a Cortex-A76
(the Raspberry Pi 5's core), with the dot product extension (the kernels' sdot path) and
without it (their generic path): a static count from the assembly, for a machine with no ARM
CPU to time on (tests/test_kernels.py::test_the_arm_kernels_under_qemu checks the results).

    EDGELLM_GENERIC_SIMD=1 python benchmarks/arm_loop_sizes.py

One pass of the loop covers 64 weights for the 32-value types (two blocks), 256 for K-quants.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from arm_rows import TYPES, build
from edgellm.kernels import gemm


def loops(asm: str, function: str) -> list[list[str]]:
    """The instructions of each loop (a label and a later branch back to it) of a function."""
    body = re.search(rf"^edgellm\.{function}[^:\n]*:\n(.*?)\.Lfunc_end", asm, re.DOTALL | re.MULTILINE).group(1)
    lines = body.splitlines()
    labels = {line.rstrip(":"): i for i, line in enumerate(lines) if re.match(r"^\.LBB\S+:", line)}
    found = []
    for i, line in enumerate(lines):
        branch = re.search(r"\b(?:b\.\w+|cbnz|tbnz)\s+.*?(\.LBB\S+)", line)
        if branch and labels.get(branch.group(1), i) < i:
            found.append([x for x in lines[labels[branch.group(1)]:i + 1]
                          if x.startswith("\t") and not x.strip().startswith(".")])
    return found


def loop_size(asm: str, name: str) -> int:
    """Instructions of the innermost loop of rows_<name> that prefetches (the block loop)."""
    return min(len(loop) for loop in loops(asm, f"rows_{name}") if any("prfm" in x for x in loop))


if __name__ == "__main__":
    listings = {variant: build(variant == "dotprod", assembly=True) for variant in ("generic", "dotprod")}
    print("| type | weights per pass | generic | sdot | ratio |")
    print("|---|---|---|---|---|")
    for name in TYPES:
        generic, sdot = (loop_size(listings[v], name) for v in ("generic", "dotprod"))
        print(f"| {name.upper()} | {256 if name.endswith('_k') else 64} | {generic} | {sdot} | {generic / sdot:.1f}x |")
    for q in ("q4", "q8"):
        steps = [len(loop) for loop in loops(listings["dotprod"], f"sparse_rows_{q}") if any("prfm" in x for x in loop)]
        print(f"2:4 compact {q.upper()} rows, a step of 4 pairs (256 weights): {min(steps)} instructions (sdot)")
    steps = [len(loop) for loop in loops(listings["dotprod"], "panel_times_x")]
    print(f"prefill GEMM, panel_times_x's step (8 tokens x 32 values x {gemm.GROUP_ROWS} rows): {max(steps)} instructions")
