"""Launch configuration, stream choice and small host-side helpers for the numba.cuda backend.

Everything that decides *how* a kernel is launched lives here, in one place:

* :data:`settings` -- block sizes, grid caps and implicit-GEMM tile shapes.  The tests
  shrink them (:func:`configure`) so that, in the CUDA simulator, several blocks and the
  grid-stride loops run on tiny inputs.
* :func:`current_stream` -- the stream every kernel is launched on: CuPy's current stream
  (through ``cuda.external_stream``) when CuPy is already imported, else numba's default
  stream.
* :func:`launch` -- configures a kernel once per (grid, block, stream, dynamic shared
  memory) and calls it, so the per-call host cost is a dict lookup plus numba's argument
  marshalling.

This module imports ``numba.cuda``; it is only imported when the backend is used.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, fields, replace

import numpy as np
from numba import cuda
from numba.cuda.core import config as _nb_config

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)


def _import_array_registry_on_numpy_2_5() -> None:
    """Import numba-cuda's array-function registry where numpy has no ``np.row_stack``.

    numba-cuda <= 0.30.4 registers an overload for ``np.row_stack`` when it first builds
    its target context (at the first kernel compile), and numpy 2.5 removed that alias,
    so every kernel compile fails with ``AttributeError: module 'numpy' has no attribute
    'row_stack'`` (seen on an H100 image with numpy 2.5.2).  The alias is lent for the
    one import of ``numba.cuda.np.arrayobj`` and taken back at once, so numpy is left as
    it was; nothing is done where numpy still has it or the module is already imported.
    """
    module = "numba.cuda.np.arrayobj"
    if SIMULATOR or hasattr(np, "row_stack") or module in sys.modules:
        return
    np.row_stack = np.vstack
    try:
        importlib.import_module(module)
    finally:
        del np.row_stack


_import_array_registry_on_numpy_2_5()

#: the largest grid size per dimension that is used (the kernels grid-stride beyond it)
_HW_MAX_GRID = (2**31 - 1, 65535, 65535)


@dataclass(frozen=True)
class Tiles:
    """Shape of one implicit-GEMM tile.

    ``BM`` output channels x ``BN`` output pixels per block, reduction chunk ``BK``;
    each thread accumulates a ``TM`` x ``TN`` register tile, so a block has
    ``(BM // TM) * (BN // TN)`` threads.
    """

    BM: int
    BN: int
    BK: int
    TM: int
    TN: int

    @property
    def threads(self) -> int:
        return (self.BM // self.TM) * (self.BN // self.TN)

    def check(self) -> None:
        nt = self.threads
        ok = (
            self.BM % self.TM == 0
            and self.BN % self.TN == 0
            and nt % self.BN == 0  # B-tile loader: whole pixel columns per thread row
            and (self.BK * self.BN) % nt == 0
            and nt % self.BK == 0  # A-tile loader: one reduction row per thread
            and (self.BM * self.BK) % nt == 0
            and nt <= 1024
        )
        if not ok:
            raise ValueError(f"inconsistent implicit-GEMM tiles {self}")


@dataclass
class Settings:
    """Launch settings (see :func:`configure`)."""

    #: threads per block of the element-wise kernels (direct conv, RoI ops, copies)
    block: int = 256
    #: upper bounds on the grid (x, y, z); the kernels grid-stride over the rest
    max_grid: tuple = _HW_MAX_GRID
    #: implicit-GEMM tiles for many output channels per group ...
    tiles_wide: Tiles = Tiles(BM=64, BN=64, BK=16, TM=4, TN=4)
    #: ... and for a moderate number
    tiles_narrow: Tiles = Tiles(BM=32, BN=64, BK=16, TM=2, TN=4)
    #: output channels per group from which the narrow / wide GEMM tiles are used
    gemm_min_channels: int = 12
    gemm_wide_channels: int = 48
    #: reduction length (input channels per group x taps) below which the direct kernel is used
    gemm_min_reduction: int = 8
    #: the wide tiles are used only if they give at least this many blocks (else the narrow ones)
    gemm_wide_min_blocks: int = 128
    #: channels per thread in roi_align (bilinear weights are reused across them)
    roi_channels_per_thread: int = 4


settings = Settings()


def configure(**changes) -> Settings:
    """Change launch settings in place (tests, tuning); returns a copy of the previous ones.

    ``settings`` stays the same object, so modules holding a reference see the change.
    Kernels are built per (dtype, tile shape), so changed tiles take effect at once.
    """
    new = replace(settings, **changes)
    new.tiles_wide.check()
    new.tiles_narrow.check()
    if not 1 <= new.block <= 1024 or new.roi_channels_per_thread < 1:
        raise ValueError(f"bad launch settings {new}")
    if len(new.max_grid) != 3 or min(new.max_grid) < 1:
        raise ValueError(f"bad grid caps {new.max_grid}")
    old = replace(settings)
    for f in fields(Settings):
        setattr(settings, f.name, getattr(new, f.name))
    return old


# ----------------------------------------------------------------------------- streams

_stream_cache: dict = {}


def current_stream():
    """``(key, stream)`` to launch on: CuPy's current stream if CuPy is imported, else 0.

    ``key`` is hashable and identifies the stream (0 for numba's default stream).
    Stream objects are created once per (device, stream pointer) and reused.
    """
    cp = sys.modules.get("cupy")
    if cp is None or SIMULATOR:
        return 0, 0
    try:
        ptr = cp.cuda.get_current_stream().ptr
    except Exception:  # a partially imported or broken cupy: fall back to the default stream
        return 0, 0
    if ptr == 0:  # CuPy's null stream is CUDA's legacy default stream: numba's default
        return 0, 0
    key = (cp.cuda.runtime.getDevice(), ptr)
    s = _stream_cache.get(key)
    if s is None:
        if len(_stream_cache) > 256:
            _stream_cache.clear()
        if ptr == 2:  # cudaStreamPerThread
            s = cuda.per_thread_default_stream()
        elif ptr == 1:  # cudaStreamLegacy
            s = cuda.legacy_default_stream()
        else:
            s = cuda.external_stream(ptr)
        _stream_cache[key] = s
    return key, s


def cai_stream_matches(stream_ptr) -> bool:
    """Whether work on a CUDA-array-interface ``stream`` value is ordered before our launches.

    ``None`` (no stream given) and our own launch stream need no synchronisation.
    In the interface, 1 is the legacy default stream and 2 the per-thread one.
    """
    if stream_ptr is None:
        return True
    key, _ = current_stream()
    ours = 0 if key == 0 else key[1]
    if ours == 0:
        return stream_ptr == 1
    return stream_ptr == ours


# ----------------------------------------------------------------------------- launching

_configured: dict = {}


def launch(kernel, grid, block, stream_key, stream, *args, shared: int = 0) -> None:
    """Launch ``kernel[grid, block, stream, shared](*args)``, configuring it once per geometry.

    ``shared`` is the dynamic shared memory in bytes (``cuda.shared.array(0, T)`` in the
    kernel); it is part of the geometry a configured launch is cached under.
    """
    if SIMULATOR:  # the simulator's kernel[...] mutates and returns the kernel itself
        if any(a is None for a in args):  # the simulator passes None; a real GPU cannot
            raise TypeError(f"{kernel}: None argument; pass an array (see absent())")
        kernel[grid, block, stream, shared](*args)  # (4 items: also resets a stale size)
        return
    key = (kernel, grid, block, stream_key, shared)
    cfg = _configured.get(key)
    if cfg is None:
        with warnings.catch_warnings():
            # small grids are a property of the input, not a mistake: no NumbaPerformanceWarning
            warnings.simplefilter("ignore")
            cfg = kernel[grid, block, stream, shared]
        if len(_configured) > 4096:
            _configured.clear()
        _configured[key] = cfg
    cfg(*args)


def choose_tiles(channels_per_group: int, reduction: int, n_pixels: int, n_z: int):
    """Implicit-GEMM tiles for a problem, or None for the direct (one thread per output) kernel.

    ``channels_per_group`` is the GEMM's M, ``reduction`` its K, ``n_pixels`` its N and
    ``n_z`` the number of independent GEMMs (images x groups [x phases]).
    """
    s = settings
    if channels_per_group < s.gemm_min_channels or reduction < max(s.gemm_min_reduction, 1):
        return None
    if channels_per_group >= s.gemm_wide_channels:
        t = s.tiles_wide
        blocks = cdiv(n_pixels, t.BN) * cdiv(channels_per_group, t.BM) * n_z
        if blocks >= s.gemm_wide_min_blocks:
            return t
    return s.tiles_narrow


#: a forced GEMM tile (autotuning's "narrow"/"wide" arms) is used only where at least this
#: share of its rows hold output channels; elsewhere the arm falls back to the rules
FORCED_TILE_MIN_FILL = 1 / 3


def two_blocks_bounds(T, tiles: Tiles) -> dict:
    """``cuda.jit`` options that hold a GEMM kernel to two blocks per SM (at most 128
    registers for 256 threads), where that can apply: float32 (float64's accumulators take
    twice the registers) and at most 256 threads (larger blocks would get fewer than 128).
    The simulator's jit takes no launch bounds."""
    if SIMULATOR or np.dtype(T) != np.float32 or tiles.threads > 256:
        return {}
    return {"launch_bounds": (tiles.threads, 2)}


#: autotuning's GEMM arms held to two blocks per SM (see :func:`bounded_path`)
TWO_BLOCK_PATHS = {"narrow2": "narrow", "wide2": "wide"}


def bounded_path(arm, rules: bool) -> bool:
    """Whether ``arm`` asks for a GEMM kernel held to two blocks per SM (``"narrow2"``,
    ``"wide2"``: the narrow / wide tiles compiled with :func:`two_blocks_bounds`, where
    ptxas spills 30-170 bytes to fit 128 registers; autotuning weighs that against the
    second block), and :func:`path_tiles` used its tiles rather than the rules' choice."""
    return not rules and arm is not None and arm["PATH"] in TWO_BLOCK_PATHS


def path_tiles(path, channels_per_group: int, reduction: int, n_pixels: int, n_z: int):
    """``(tiles, rules)`` for a kernel path of autotuning's arms (see :mod:`.autotune`):
    the GEMM tiles or None (the direct kernel), and whether that is the rules' choice
    (:func:`choose_tiles`), which an arm falls back to where its path does not suit.

    ``path`` is None (the rules), ``"direct"``, ``"grouped"`` (conv2d's several-channels
    direct kernel: no tiles, the launcher picks it), ``"narrow"`` or ``"wide"`` (or
    ``"narrow2"``/``"wide2"``, the same tiles: see :func:`bounded_path`); any other
    value (``"depthwise"``, handled by conv2d's launcher before this) means the rules.
    """
    if path in ("direct", "grouped"):
        return None, False
    path = TWO_BLOCK_PATHS.get(path, path)
    if path in ("narrow", "wide") and reduction >= 1:
        t = settings.tiles_narrow if path == "narrow" else settings.tiles_wide
        if channels_per_group >= FORCED_TILE_MIN_FILL * t.BM:
            return t, False
    return choose_tiles(channels_per_group, reduction, n_pixels, n_z), True


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_2d(n_x: int, n_y: int, block: int):
    """Grid of an element-wise kernel: x over ``n_x`` items, ``block`` a block; y over ``n_y``."""
    gx, gy, _ = settings.max_grid
    return (max(1, min(cdiv(n_x, block), gx)), max(1, min(n_y, gy)))


def grid_tiles(tiles: Tiles, n_pixels: int, n_channels: int, n_z: int):
    """1-D grid of an implicit-GEMM kernel: one block per ``tiles`` tile of ``n_pixels`` x
    ``n_channels`` in each of ``n_z`` GEMMs, capped (the kernels grid-stride past the cap)."""
    n_tiles = cdiv(n_pixels, tiles.BN) * cdiv(n_channels, tiles.BM) * n_z
    return (max(1, min(n_tiles, settings.max_grid[0])),)


def empty(shape, dtype):
    """An uninitialised device array (also for zero-size outputs)."""
    return cuda.device_array(shape, dtype=dtype)


_absent_cache: dict = {}


def absent(array, dtype, ndim: int):
    """``array``, or for ``None`` a zero-size device array standing in for it.

    numba.cuda cannot pass ``None`` to a kernel on a real GPU (``NotImplementedError:
    (none, None)`` at launch; the simulator accepts it), so an optional argument (bias,
    mask) is always an array and the kernels test ``a.shape[0] != 0``: a uniform branch.
    The stand-ins are null pointers that no kernel reads, so one per (dtype, ndim) serves
    every device.
    """
    if array is not None:
        return array
    key = (np.dtype(dtype), ndim)
    a = _absent_cache.get(key)
    if a is None:
        a = _absent_cache[key] = cuda.device_array((0,) * ndim, dtype=dtype)
    return a


_views_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memo_view(array, shape: tuple):
    """``array.reshape(shape)`` (C-contiguous ``array``), memoised per (array, shape).

    Making a ``DeviceNDArray`` view costs 3.2-4.4 us on the host (numba-cuda 0.30.4, the
    dev VM; a cache hit 0.15 us), and a layer passes the same weight array call after call.  The
    cache holds the arrays weakly (an entry goes with its array) and the views share the
    array's memory, so writes to it are seen.  Arrays that take no weak reference get a
    fresh view.
    """
    try:
        views = _views_cache.get(array)
    except TypeError:  # not weakly referenceable
        return array.reshape(*shape)
    if views is None:
        views = _views_cache[array] = {}
    view = views.get(shape)
    if view is None:
        view = views[shape] = array.reshape(*shape)
    return view


def weight_rows(weight):
    """``weight`` (C-contiguous, ``(K, ...)``) viewed as ``(K, rest)`` rows (:func:`memo_view`)."""
    return memo_view(weight, (weight.shape[0], weight.size // max(weight.shape[0], 1)))


_scratch_cache: dict = {}


def stream_scratch(n: int, dtype, stream_key):
    """A device array of ``n`` elements of ``dtype`` for work on the launch stream only.

    Small per-call buffers (the exact transposed pass's flags) would otherwise be a
    ``cudaMalloc`` each call: numba's default allocator keeps no pool.  Work on one stream
    runs in order, so a buffer kept per (device, stream, host thread) can serve call after
    call: a call's writes come after the previous call's reads.  The host thread is part
    of the key because the per-thread default stream is a different stream in each thread.
    The contents are undefined: the caller's first kernel must write what the next reads.
    """
    # a CuPy stream's key names its device; numba's default stream is the current context's
    device = getattr(cuda.current_context().device, "id", 0) if stream_key == 0 else None
    key = (device, stream_key, threading.get_ident(), np.dtype(dtype), n)
    buf = _scratch_cache.get(key)
    if buf is None:
        if len(_scratch_cache) > 256:
            # dropping a buffer is safe: freeing device memory waits for the work using it
            _scratch_cache.clear()
        buf = _scratch_cache[key] = cuda.device_array((n,), dtype=dtype)
    return buf


def scalar(dtype, value):
    """``value`` as a scalar of the kernel's float dtype (so float32 kernels stay float32)."""
    return np.dtype(dtype).type(value)


def numba_arg_types(T):
    """``(float, int, 1-D, 2-D, 4-D array)`` numba types of the kernel arguments for ``T``."""
    from numba import types

    ft = types.float32 if np.dtype(T) == np.float32 else types.float64
    return (
        ft,
        types.int64,
        types.Array(ft, 1, "C"),
        types.Array(ft, 2, "C"),
        types.Array(ft, 4, "C"),
    )
