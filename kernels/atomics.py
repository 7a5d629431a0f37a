"""What a thread team needs that Numba lacks: atomic memory operations, a spin-wait hint, a
prefetch and raw addresses turned back into arrays. Each is a small @intrinsic emitting one LLVM
instruction.

    atomic_load(a, i)              a[i], sequentially consistent (never hoisted out of a loop)
    atomic_store(a, i, v)          a[i] = v, sequentially consistent
    atomic_cas(a, i, old, new)     a[i] = new if a[i] == old; True if it did
    atomic_add(a, i, v)            a[i] += v; returns the value before
    cpu_relax()                    the CPU's spin-loop hint (x86 pause, ARM yield)
    prefetch(addr)                 fetch the cache line at an int64 address into L2 (a hint)
    address_as_pointer(addr, ty)   an int64 address as a typed pointer, for numba.carray
    array_at(addr, ty, shape)      the array of ty at an int64 address (carray of the above)
    call_at(f, a, b)               call the C function void f(int64 a, int64 b) at address f

`a` is a 1-D int64 array. Sequential consistency everywhere: on x86 the loads are plain moves
and the stores and read-modify-writes locked instructions anyway; on ARM it gives the barriers a
job queue needs (descriptor written before the job is published, read after it is claimed).
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import njit

I32, I64 = ir.IntType(32), ir.IntType(64)
ORDER = "seq_cst"


def _slot(context, builder, arrty, arr, index):
    data = cgutils.create_struct_proxy(arrty)(context, builder, value=arr).data
    return builder.gep(data, [index])


@intrinsic
def atomic_load(typingctx, a, i):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig.args[0], *args), ORDER, 8)

    return types.int64(a, types.intp), codegen


@intrinsic
def atomic_store(typingctx, a, i, v):
    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, _slot(context, builder, sig.args[0], args[0], args[1]), ORDER, 8)
        return context.get_dummy_value()

    return types.void(a, types.intp, types.int64), codegen


@intrinsic
def atomic_cas(typingctx, a, i, old, new):
    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        pair = builder.cmpxchg(ptr, args[2], args[3], ORDER, ORDER)
        return builder.extract_value(pair, 1)

    return types.boolean(a, types.intp, types.int64, types.int64), codegen


@intrinsic
def atomic_add(typingctx, a, i, v):
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _slot(context, builder, sig.args[0], args[0], args[1]), args[2], ORDER)

    return types.int64(a, types.intp, types.int64), codegen


_TRIPLE = llvm.get_process_triple()


@intrinsic
def cpu_relax(typingctx):
    def codegen(context, builder, sig, args):
        module = builder.module
        if _TRIPLE.startswith(("x86_64", "i386", "i686")):
            fn = module.globals.get("llvm.x86.sse2.pause") or ir.Function(
                module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _TRIPLE.startswith(("aarch64", "arm64")):  # hint #1 is YIELD
            fn = module.globals.get("llvm.aarch64.hint") or ir.Function(
                module, ir.FunctionType(ir.VoidType(), [I32]), "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(I32, 1)])
        # elsewhere nothing: the atomic load in the loop already keeps it from being optimized out
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def address_as_pointer(typingctx, addr, dtype):
    """addr (int64) as a pointer to dtype (a numba type given as types.float32 etc.)."""
    target = dtype.dtype if isinstance(dtype, types.DTypeSpec) else dtype.instance_type
    ptrty = types.CPointer(target)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return ptrty(types.int64, dtype), codegen


@njit(cache=True, nogil=True, inline="always")
def array_at(addr, dtype, shape):
    """The C-order array of dtype, of shape, at address addr: a reinterpreting view, as
    ndarray.view(dtype) gives, for numba code. Each ndarray.view call site compiles a helper of
    its own (~0.25 s of a first run apiece); this compiles in a few ms."""
    return carray(address_as_pointer(addr, dtype), shape)


@intrinsic
def call_at(typingctx, f, a, b):
    """Call the C function void(int64, int64) at address f (int64) with a and b: a numba cfunc
    compiled apart (its .address), so that its code is not compiled into the caller's."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [I64, I64])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1], args[2]])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64), codegen


@intrinsic
def prefetch(typingctx, addr):
    """A hint to fetch the cache line at addr (int64) into L2 (llvm.prefetch, read, locality 2:
    x86 prefetcht1). It never faults, so an address that is no longer mapped does no harm."""
    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        module = builder.module
        fn = module.globals.get("llvm.prefetch.p0i8") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.inttoptr(args[0], i8p), ir.Constant(I32, 0), ir.Constant(I32, 2),
                          ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return types.void(types.int64), codegen
