"""Reading the x86 assembly numba generates (`inspect_asm`)."""

from __future__ import annotations

import re

# An instruction with a zmm operand that is not a move: one copying the kernels' array
# arguments (structs on the stack) is a load or a store, on the load/store ports; LLVM's Zen 4
# tuning copies them 64 bytes at a time.
_ZMM_WORK = re.compile(r"^\s*(?!vmov)(v\w+)\s+[^\n]*%zmm", re.M)


def zmm_work(asm: str) -> list[str]:
    """The mnemonics of the instructions in asm that compute on 512-bit registers: on Intel one
    in flight takes port 1 from the 256-bit instructions around it."""
    return _ZMM_WORK.findall(asm)
