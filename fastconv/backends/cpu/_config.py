"""The one place for the ``numba.njit`` options of every CPU kernel.

Every CPU kernel (conv, deform, roi, ...) is decorated with one of::

    @numba.njit(**JIT_OPTIONS)          # multi-threaded: uses numba.prange
    @numba.njit(**SERIAL_JIT_OPTIONS)   # helpers / serial kernels, inlined or called from the above

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

__all__ = ["EXACT_JIT_OPTIONS", "FASTMATH", "JIT_OPTIONS", "SERIAL_JIT_OPTIONS"]
