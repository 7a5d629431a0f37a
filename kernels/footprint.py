"""What numba would hold for a compile that a run from the disk cache never makes, not taken.

Loading a kernel from numba's disk cache: numba first refreshes its whole lowering context
(imports 60 modules of implementations, numpy's functions, random, linalg, typed containers, and
registers them: ~14 MiB, 8 MiB of it still resident at the peak of a run) although rebuilding
a cached kernel uses none of it: the kernel arrives as machine code, and what it needs besides
(numba's runtime, NRT) is set up apart. lean_cache_loads() makes a cache load set up only NRT;
the first compile in the process still refreshes everything itself (numba's compiler does,
before any compile), so a cache miss, a new signature or a user's own njit function compiles
as before.

A cached kernel also brings the environments (globals and constants) of the functions it links,
numba's own implementations of np.empty, reshape, view and the like among them, and rebuilding
one imports its module for the globals: numba.np.arrayobj and the 10 modules it imports, 3.4
MiB of a run's peak. Only object-mode code reads an environment's globals (nopython code has
its globals frozen in at compile time and reads only the constants, which the cache keeps), so
a cache load gives an environment of a numba module not yet imported an empty globals dict;
the rest are rebuilt as numba does.

numba also holds, beside each kernel's machine code, the kernel's LLVM module (parsed from the
disk cache's bitcode when the kernel loads) so that a later compile of a function that calls it
can link it in. Once the warm-up has loaded every kernel nothing compiles, and those modules are
~5 MiB of LLVM's heap for ~0.7 MiB of bitcode. release_linking_modules() turns each back into its
bitcode; the module is parsed again the first time a compile links against it (a new signature,
a user's own njit function calling a kernel).

These reach into numba's internals (`Cache.load_overload` / `_load_overload`,
`environment._rebuild_env`, CodeLibrary's `_shared_module` / `_get_module_for_linking`, numba
0.68): a numba that moved them is left as it is.
"""

from __future__ import annotations

import sys

from llvmlite import binding as llvm
from numba.core import caching, environment
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import rtsys


def lean_cache_loads() -> bool:
    """Cache loads from here on set up numba's runtime only, not its whole lowering context
    (see the module's docstring). Returns whether numba's cache has the hooks this needs."""
    cache = caching.Cache
    if getattr(cache.load_overload, "lean", False):
        return True
    if not all(hasattr(cache, name) for name in ("load_overload", "_load_overload", "_guard_against_spurious_io_errors")):
        return False

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)  # what a cached kernel calls (allocation, refcounts)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload.lean = True
    load_overload.__doc__ = cache.load_overload.__doc__
    cache.load_overload = load_overload
    if _numba_rebuild_env is not None and all(hasattr(environment, n) for n in ("lookup_environment", "Environment")):
        environment._rebuild_env = _rebuild_env  # what the cache's pickles call, looked up by name
    return True


_numba_rebuild_env = getattr(environment, "_rebuild_env", None)


def _rebuild_env(modname, consts, env_name):
    """numba's environment._rebuild_env, but the environment of a numba module not imported
    yet gets globals that name the module only (see the module's docstring)."""
    if not modname.startswith("numba.") or modname in sys.modules or environment.lookup_environment(env_name):
        return _numba_rebuild_env(modname, consts, env_name)
    env = environment.Environment({"__name__": modname})
    env.consts[:] = consts
    env.env_name = env_name
    environment.Environment._memo[env_name] = env  # as numba's: found again by name
    return env


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
