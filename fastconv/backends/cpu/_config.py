"""The one place for the ``numba.njit`` options of every CPU kernel.

Every CPU kernel (conv, deform, roi, ...) is decorated with one of::

    @parallel_kernel                    # multi-threaded: numba.njit(**JIT_OPTIONS), numba.prange
    @numba.njit(**SERIAL_JIT_OPTIONS)   # helpers / serial kernels, inlined or called from the above

``parallel_kernel`` adds a serial twin for one case: a process forked (``os.fork``,
``multiprocessing``'s default "fork" start method on Linux, PyTorch DataLoader workers)
from a parent that had already run a parallel kernel on numba's GNU OpenMP threading
layer.  GNU OpenMP cannot run in such a child, and numba terminates the child at its
first parallel launch; a ``multiprocessing.Pool`` then waits forever for its workers.
There, every kernel runs its serial twin instead (the same code with ``prange`` as
``range``, compiled on first use in the child and cached on disk under its own name).

``FASTMATH`` keeps IEEE NaN/Inf semantics: it never contains ``"nnan"`` or
``"ninf"`` (NaN/Inf in the data must propagate like PyTorch).  ``"contract"``
lets LLVM fuse multiply-add into FMA, ``"reassoc"`` lets it vectorise and
reorder reductions (accumulation order differs from the oracle only by
rounding), ``"arcp"`` allows reciprocal multiplication instead of division.

**Large arrays are allocated by NumPy in the Python wrappers and passed in**, never
with ``np.empty`` inside a kernel: NumPy advises transparent huge pages for arrays of
4 MiB and more, numba's allocator does not, and memory the C library has handed back
to the system comes back one 4 KiB page fault at a time.  On the development VM
(2026-11-23) a 25.7 MB roi_align output allocated inside the kernel, right after
torchvision's call had freed its own, cost 6272 faults and ~75 ms (the call itself
takes ~5 ms); allocated by NumPy, no fault.  Small per-thread scratch buffers inside
``prange`` bodies are fine.

``cache=True`` writes the compiled machine code next to the sources
(``__pycache__``), so a warm process's first call does not recompile.
``boundscheck=False`` is numba's default; spelled out because kernels rely on
it for vectorisation.
"""

import functools
import os
import platform
import types

import numba
from llvmlite import ir
from numba.core import cgutils

FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})

assert "nnan" not in FASTMATH and "ninf" not in FASTMATH and "fast" not in FASTMATH

#: Options for kernels that use ``numba.prange`` (respect ``numba.set_num_threads``).
JIT_OPTIONS = {
    "parallel": True,
    "cache": True,
    "fastmath": set(FASTMATH),
    "nogil": True,
    "boundscheck": False,
    "error_model": "numpy",
}

#: Options for serial kernels and helpers (no threading layer involved).
SERIAL_JIT_OPTIONS = {
    "parallel": False,
    "cache": True,
    "fastmath": set(FASTMATH),
    "nogil": True,
    "boundscheck": False,
    "error_model": "numpy",
}

#: Options for the geometry helpers whose results feed discrete decisions (box corners,
#: sample positions, the "outside the image" tests, rounding): plain IEEE arithmetic, in
#: torchvision's operation order, so that e.g. ``1.5 * 13 / 13`` stays exactly 1.5 instead
#: of ``1.5 * (13 * (1/13))`` -> 1.4999999 and a sample at -1 does not move outside.
#: LLVM keeps fastmath flags per instruction, so these stay exact when inlined into a
#: fastmath kernel.
EXACT_JIT_OPTIONS = {**SERIAL_JIT_OPTIONS, "fastmath": False}



def target_is_x86() -> bool:
    """Whether numba compiles for x86 (it compiles for the machine it runs on)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


@functools.cache  # numba reads its target once per process, as this does
def target_cpu_features() -> frozenset:
    """The CPU features numba compiles for (``"+avx512f"``, ``"+fma"``, ...): the host's, or
    ``NUMBA_CPU_FEATURES`` when set (numba sets it to none for ``NUMBA_CPU_NAME=generic``).
    Compiled kernels are cached per CPU model and feature set, so choices made from these
    are consistent with the cache."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    feats = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f for f in feats.split(",") if f)


def _multiply_add_intrinsic() -> str:
    # llvm.fma demands the fused result, so on an x86 target without FMA (the generic
    # target, pre-Haswell CPUs, a VM's baseline CPU model) LLVM calls libm's fmaf for every
    # element: the 3x3 64->64 conv on 56x56 took 57 ms there instead of 2.5 ms (dev VM,
    # NUMBA_CPU_NAME=generic).  llvm.fmuladd is a multiply and an add there, and a fused
    # multiply-add wherever FMA is fast; elsewhere the kernels keep llvm.fma, so their code
    # on FMA targets is what was measured.
    return ("llvm.fmuladd" if target_is_x86() and "+fma" not in target_cpu_features()
            else "llvm.fma")


#: ``llvm.fma`` where the target has hardware FMA, else ``llvm.fmuladd``
MULTIPLY_ADD_INTRINSIC = _multiply_add_intrinsic()


def describe_target() -> str:
    """One line on what the CPU kernels are compiled for (``python -m fastconv info``):
    numba's CPU name, the widest SIMD its features allow, and whether it has FMA."""
    import llvmlite.binding as llvm
    from numba.core import config

    name = config.CPU_NAME or llvm.get_host_cpu_name()
    flags = target_cpu_features()
    if not target_is_x86():
        return f"{name} ({platform.machine()})"
    simd = ("AVX-512" if "+avx512f" in flags else "AVX2" if "+avx2" in flags
            else "AVX" if "+avx" in flags else "SSE")
    text = f"{name}, {simd}, {'FMA' if '+fma' in flags else 'no FMA'}"
    if config.CPU_NAME is not None:
        text += " (NUMBA_CPU_NAME: portable code, slower than the host's own)"
    return text


def multiply_add(builder, a, b, c):
    """Emit ``a*b + c`` for float / double scalars or vectors (the kernels' intrinsics' one
    multiply-add): fused where the target has FMA (``MULTIPLY_ADD_INTRINSIC``)."""
    ty = a.type
    elem = ty.element if isinstance(ty, ir.VectorType) else ty
    name = "f32" if isinstance(elem, ir.FloatType) else "f64"
    if isinstance(ty, ir.VectorType):
        name = f"v{ty.count}{name}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3),
                                        f"{MULTIPLY_ADD_INTRINSIC}.{name}")
    return builder.call(fn, [a, b, c])


class _ParallelKernel:
    """A ``parallel=True`` kernel and, made on demand, its serial twin (see the module
    docstring).  Called like the numba dispatcher it wraps."""

    def __init__(self, py_func):
        self.parallel = numba.njit(**JIT_OPTIONS)(py_func)
        self._serial = None
        functools.update_wrapper(self, py_func)

    def __call__(self, *args):
        if _serial_only:
            return self.serial(*args)
        return self.parallel(*args)

    @property
    def serial(self):
        """The kernel compiled without ``parallel``.  A copy of the function under its own
        ``__qualname__`` keeps its on-disk cache entry apart from the parallel one's (numba
        keys the cache by function name and signature, not by the ``parallel`` flag)."""
        if self._serial is None:
            f = self.parallel.py_func
            twin = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__,
                                      f.__closure__)
            twin.__qualname__ = f.__qualname__ + "_serial"
            twin.__module__ = f.__module__
            self._serial = numba.njit(**SERIAL_JIT_OPTIONS)(twin)
        return self._serial


def parallel_kernel(py_func):
    """Decorator: ``numba.njit(**JIT_OPTIONS)`` with a serial twin for forked children."""
    return _ParallelKernel(py_func)


#: True in a process forked after its parent had started GNU OpenMP (set at fork)
_serial_only = False


def _gnu_openmp_started() -> bool:
    try:
        if numba.threading_layer() != "omp":
            return False
    except ValueError:  # no parallel kernel has run: the child starts its own layer
        return False
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def _after_fork_in_child():
    global _serial_only
    _serial_only = _serial_only or _gnu_openmp_started()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["EXACT_JIT_OPTIONS", "FASTMATH", "JIT_OPTIONS", "MULTIPLY_ADD_INTRINSIC",
           "SERIAL_JIT_OPTIONS", "describe_target", "multiply_add", "parallel_kernel",
           "target_cpu_features", "target_is_x86"]
