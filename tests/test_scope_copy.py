"""kernels/scope_copy.py: a block of numba IR copies as copy.deepcopy's generic copy of its scope
would make it (the inliner's copies of a callee), only faster."""

import copy

from numba.core import compiler, ir

from edgellm.kernels.scope_copy import _copy_scope, fast_scope_copies


def _sample(x, n):
    total = 0
    for i in range(n):
        if x[i] > 0:
            total += x[i]
        else:
            total -= 1
    return total


def _generic_copies(blocks):
    """The blocks copied with numba's own (generic) scope copy."""
    assert ir.Scope.__deepcopy__ is _copy_scope
    del ir.Scope.__deepcopy__
    try:
        return {label: copy.deepcopy(block) for label, block in blocks.items()}
    finally:
        ir.Scope.__deepcopy__ = _copy_scope


def _shape(block):
    """What a copy must keep: the statements, the scope's variables, their versions, and that
    every variable of the block belongs to the block's (new) scope."""
    scope = block.scope
    variables = {name: (var.name, var.loc.line) for name, var in scope.localvars._con.items()}
    in_scope = all(var.scope is scope for stmt in block.body for var in stmt.list_vars())
    return ([str(stmt) for stmt in block.body], variables, dict(scope.redefined),
            {k: sorted(v) for k, v in scope.var_redefinitions.items()}, in_scope, scope.parent)


def test_a_block_copies_as_numbas_generic_deepcopy_would():
    assert fast_scope_copies()
    blocks = compiler.run_frontend(_sample).blocks
    assert len(blocks) > 3
    fast = {label: copy.deepcopy(block) for label, block in blocks.items()}
    generic = _generic_copies(blocks)
    for label, block in blocks.items():
        assert _shape(fast[label]) == _shape(generic[label]) == _shape(block)
        assert fast[label].scope is not block.scope  # a copy: the inliner renames in it
        assert all(a is not b for a, b in zip(fast[label].scope.localvars._con.values(),
                                              block.scope.localvars._con.values()))


def test_one_deepcopy_call_shares_one_scope_copy():
    """Within one copy (one memo), the blocks' shared scope stays shared, as with the generic copy."""
    blocks = list(compiler.run_frontend(_sample).blocks.values())
    copies = copy.deepcopy(blocks)
    assert len({id(b.scope) for b in copies}) == 1
    assert copies[0].scope is not blocks[0].scope
