"""What numba keeps of the loaded kernels that a run does not use, handed back.

numba holds, beside each kernel's machine code, the kernel's LLVM module (parsed from the disk
cache's bitcode when the kernel loads) so that a later compile of a function that calls it can
link it in. Once the warm-up has loaded every kernel nothing compiles, and those modules are
~5 MiB of LLVM's heap for ~0.7 MiB of bitcode. release_linking_modules() turns each back into its
bitcode; the module is parsed again the first time a compile links against it (a new signature,
a user's own njit function calling a kernel).

This reaches into numba's CodeLibrary (`_shared_module`, `_get_module_for_linking`, numba 0.68):
a numba that moved them is left as it is.
"""

from __future__ import annotations

import sys

from llvmlite import binding as llvm
from numba.core.dispatcher import Dispatcher


def release_linking_modules(package: str = "edgellm") -> int:
    """For every kernel overload loaded in package's modules: its LLVM linking module kept as
    bitcode instead (parsed back on demand). Returns the modules released."""
    released = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                released += sum(_release(cres.library) for cres in list(value.overloads.values()))
    return released


def _release(library) -> bool:
    module = getattr(library, "_shared_module", None)
    if module is None or "_get_module_for_linking" in vars(library):
        return False
    bitcode = module.as_bitcode()

    def module_for_linking():
        del library._get_module_for_linking  # back to CodeLibrary's own method
        library._shared_module = llvm.parse_bitcode(bitcode)
        return library._shared_module

    library._get_module_for_linking = module_for_linking
    library._shared_module = None
    return True
