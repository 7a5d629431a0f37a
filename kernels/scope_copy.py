"""A faster copy of a numba IR scope, for a first run's compile (numba 0.68's internals).

numba inlines a function marked inline="always" by copying its IR at each call site, one block
at a time, and each block's copy copies the scope it points to: every variable of the callee,
through copy.deepcopy's generic machinery (~10 Python calls a variable). The callee's variables
times its blocks: for the team's entry (team.serve, every job's code inlined) 1.1 million
variable copies, 2.6 of its 20 s of compile on a Zen 1 core.

fast_scope_copies() gives ir.Scope a __deepcopy__ that builds the same copy directly: a new
scope with the same parent (copied), location, redefinition counts and a variable of the same
name and location for each, registered in the copy's memo as deepcopy would (a block's
variables then point to the copied scope's). A numba without these attributes is left as is.
"""

from __future__ import annotations

import copy
from collections import defaultdict

from numba.core import ir


def _copy_scope(self, memo):
    new = object.__new__(ir.Scope)
    memo[id(self)] = new
    new.parent = copy.deepcopy(self.parent, memo)
    new.loc = self.loc
    new.redefined = defaultdict(int, self.redefined)
    new.var_redefinitions = defaultdict(set, {name: set(names) for name, names in self.var_redefinitions.items()})
    new.localvars = ir.VarMap()
    variables = new.localvars._con
    for name, var in self.localvars._con.items():
        twin = memo.get(id(var))
        if twin is None:
            twin = object.__new__(ir.Var)
            twin.scope, twin.name, twin.loc = new, var.name, var.loc
            memo[id(var)] = twin
        variables[name] = twin
    return new


def fast_scope_copies() -> bool:
    """ir.Scope copies as above from here on; returns whether numba's IR has what this needs."""
    if getattr(ir.Scope, "__deepcopy__", None) is _copy_scope:
        return True
    probe = ir.Scope(None, ir.Loc("probe", 0))
    probe.define("x", probe.loc)
    if not (hasattr(ir, "VarMap") and hasattr(probe.localvars, "_con")
            and {"parent", "loc", "redefined", "var_redefinitions", "localvars"} <= set(vars(probe))
            and set(vars(probe.localvars._con["x"])) == {"scope", "name", "loc"}):
        return False
    ir.Scope.__deepcopy__ = _copy_scope
    return True
