"""``python -m fastconv bench``: fastconv against PyTorch/torchvision, as BENCHMARKS.md asks.

Method (``shared/BENCHMARKS.md``, ``docs/performance.md``):

* every case of :mod:`fastconv._cases` runs its peer (``torch.nn.functional`` /
  ``torchvision.ops``) and each fastconv backend **interleaved in one process**
  (A B A B ...) after a warm-up, and the **median** of ``--repeat`` samples is
  reported with the ratio fastconv/peer (lower is better);
* CPU: one block per ``--threads`` entry (``numba.set_num_threads`` and
  ``torch.set_num_threads``); a sample times ``number`` back-to-back calls
  (``number`` chosen so a sample lasts at least ``--min-time``);
* GPU: each sample is two passes: *host* wall time of one call on an idle GPU
  (launch overhead, the call returns before the kernels finish), and *device*
  time from CUDA events around the call, recorded while a spin kernel keeps
  the GPU busy, so the events measure the kernels back to back and not the
  host's launch gaps;
* the output of every contestant is compared once with the peer's
  (``max|fastconv - peer| / max|peer|``);
* GFLOP/s and GB/s from the case's FLOP and compulsory-byte counts, as a
  fraction of the machine's ceiling measured in the same run (a large float32
  matmul in NumPy and PyTorch, a large copy; on the GPU a device copy and an
  fp32 matmul) and of the nominal figure of BENCHMARKS.md;
* first-call latency in fresh subprocesses: *cold* with an empty temporary
  ``NUMBA_CACHE_DIR``/``CUPY_CACHE_DIR`` (JIT/NVRTC compile included) and
  *warm* with the normal on-disk cache (target < 1 s).

``main(argv)`` is the entry point (``argv`` = the arguments after ``bench``);
:func:`make_runner` and :func:`interleave` are shared with the
pytest-benchmark suite in ``bench/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import __version__, _cases
from ._autotune import set_autotune

try:
    import resource  # page-fault counts (POSIX only)
except ImportError:  # Windows
    resource = None

GPU_BACKENDS = ("cupy", "numba_cuda")
HOST_BACKENDS = ("cpu", "reference")

#: BENCHMARKS.md: 2 cores x 2 AVX-512 FMA/cycle x 16 lanes x 2 flop x ~3.7 GHz = 470 GFLOP/s
CPU_NOMINAL_GFLOPS_PER_CORE = 2 * 16 * 2 * 3.7
#: BENCHMARKS.md: H100 SXM float32 without tensor cores, and measured copy bandwidth
GPU_NOMINAL = {"device": "H100 SXM", "tflops": 67.0, "copy_tbs": 3.0}
FIRST_CALL_TARGET_S = 1.0  # first call with a warm on-disk cache
HOST_OVERHEAD_TARGET_US = {"cupy": 20.0, "numba_cuda": 50.0}
ORACLE_SPEEDUP_TARGET = 100.0  # every CPU op >= 100x faster than the NumPy oracle
#: max|fastconv - peer| / max|peer| above this is flagged as a mismatch
MISMATCH_TOL = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-8}

_WORKER_MARK = "FASTCONV_FIRST_CALL "


class Unavailable(Exception):
    """A contestant (peer library, backend, GPU) that cannot run here; the reason says why."""


# ============================================================================== environment


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


def versions() -> dict:
    """Versions of everything that matters for the numbers (``None`` = not installed)."""
    import numba

    out = {
        "fastconv": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": None,
    }
    with contextlib.suppress(Exception):
        out["numba_threading_layer"] = numba.threading_layer()
    for dist in ("torch", "torchvision", "scipy", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x",
                 "cupy", "cuda-bindings", "tqdm", "matplotlib"):
        v = _dist_version(dist)
        if v is not None:
            out[dist] = v
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch"] = torch.__version__
        with contextlib.suppress(Exception):
            out["torch_cuda"] = torch.version.cuda
            out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    if "cupy" in sys.modules:
        with contextlib.suppress(Exception):
            cupy = sys.modules["cupy"]
            out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import numba

    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "loadavg": _loadavg(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "avx512f": " avx512f" in flags,
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
                                                "NUMBA_CACHE_DIR", "CUPY_TF32")
                if os.environ.get(k) is not None},
        "platform": platform.platform(),
    }


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def usable_backends() -> dict:
    """backend -> (usable, reason) for the GPU backends."""
    from . import _dispatch

    return {b: _dispatch.backend_status(b) for b in GPU_BACKENDS}


def _peer_libs_status() -> dict:
    """Which peer libraries import here (torch, torchvision, scipy): name -> None or reason."""
    status = {}
    for lib in ("torch", "torchvision", "scipy"):
        if importlib.util.find_spec(lib) is None:
            status[lib] = "not installed"
            continue
        try:
            importlib.import_module(lib if lib != "scipy" else "scipy.ndimage")
            status[lib] = None
        except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch
            status[lib] = f"{type(exc).__name__}: {exc}"
    return status


def set_threads(n: int) -> None:
    """CPU threads for numba (fastconv's CPU kernels) and torch (the peers)."""
    import numba

    n_max = numba.config.NUMBA_NUM_THREADS
    if n > n_max:
        raise ValueError(
            f"--threads {n} exceeds numba's thread pool ({n_max}); set NUMBA_NUM_THREADS={n}"
        )
    numba.set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


# ============================================================================== runners


@dataclass
class Runner:
    """One contestant for one case: a zero-argument call and how to wait for / read its result."""

    impl: str  # "fastconv:cpu", "torch:cuda", "scipy:cpu", ...
    label: str  # what the tables show
    call: Callable[[], object]
    sync: Callable[[], None] = lambda: None
    gpu: str | None = None  # the library whose CUDA events time it ("cupy", "torch", "numba")
    size: str = "full"
    #: what the device-time samples run, when it differs from ``call``: the RoI ops' box
    #: check copies to the host and synchronises, which would put host work inside the
    #: CUDA-event window, so their device time is taken with ``check_boxes=False``
    #: (torchvision checks nothing) and their host time with the check as asked
    device_call: Callable[[], object] | None = None

    def run_synced(self):
        out = self.call()
        self.sync()
        return out


#: every implementation the suite knows; ``fastconv:*`` are fastconv backends, the rest peers
IMPLS = (
    "fastconv:cpu", "fastconv:cupy", "fastconv:numba_cuda", "fastconv:reference",
    "torch:cpu", "torch:cuda", "scipy:cpu", "cupyx:cuda",
)


def to_numpy(out) -> np.ndarray:
    """Any result (numpy, cupy, numba device array, torch tensor) as a host float64 array."""
    if hasattr(out, "copy_to_host"):
        out = out.copy_to_host()
    elif type(out).__module__.startswith("cupy"):
        import cupy

        out = cupy.asnumpy(out)
    elif type(out).__module__.startswith("torch"):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def _torch_call(op: str, t: dict, p: dict):
    """The torch/torchvision peer of ``op`` on tensors ``t`` with params ``p``."""
    import torch.nn.functional as F

    if op == "conv2d":
        return lambda: F.conv2d(t["input"], t["weight"], None, p["stride"], p["padding"],
                                p["dilation"], p["groups"])
    if op == "conv_transpose2d":
        return lambda: F.conv_transpose2d(t["input"], t["weight"], None, p["stride"],
                                          p["padding"], p["output_padding"], p["groups"],
                                          p["dilation"])
    import torchvision.ops as tvo

    if op == "deform_conv2d":
        return lambda: tvo.deform_conv2d(t["input"], t["offset"], t["weight"], None,
                                         p["stride"], p["padding"], p["dilation"], t["mask"])
    if op == "roi_align":
        return lambda: tvo.roi_align(t["input"], t["boxes"], p["output_size"], p["spatial_scale"],
                                     p["sampling_ratio"], p["aligned"])
    if op == "roi_pool":
        return lambda: tvo.roi_pool(t["input"], t["boxes"], p["output_size"], p["spatial_scale"])
    raise ValueError(op)


def _need(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - missing or broken peer
        raise Unavailable(
            f"{module} cannot be imported ({type(exc).__name__}: {exc}); {hint}"
        ) from exc


def configure_torch_cuda(torch) -> None:
    """cuDNN autotuning on, TF32 off (BENCHMARKS.md: fp32 against fp32)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def make_runner(case, impl: str, size: str = "full", seed: int = 0, inputs=None,
                check_boxes: bool = True) -> Runner:
    """A :class:`Runner` for ``impl`` (one of :data:`IMPLS`) on ``case``.

    ``inputs`` (a :class:`fastconv._cases.Inputs`) lets several runners share one
    set of host arrays; device copies are made here.  Raises :class:`Unavailable`
    when the library, backend or GPU is missing, or the peer cannot do this case.
    """
    if isinstance(case, str):
        case = _cases.get(case)
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")
    inp = case.inputs(size, seed) if inputs is None else inputs
    lib, _, where = impl.partition(":")
    extra = {"check_boxes": bool(check_boxes)} if case.op in ("roi_align", "roi_pool") else {}

    if lib == "fastconv":
        backend = where
        if backend in GPU_BACKENDS:
            from . import _dispatch

            ok, why = _dispatch.backend_status(backend)
            if not ok:
                raise Unavailable(why)
        label = f"fastconv {backend}"
        if backend in HOST_BACKENDS:
            return Runner(impl, label, lambda: inp.call_fastconv(backend, **extra), size=size)
        if backend == "cupy":
            import cupy

            dev = {k: None if v is None else cupy.asarray(v) for k, v in inp.arrays.items()}
            sync = cupy.cuda.Device().synchronize
            gpu = "cupy"
        else:
            from numba import cuda

            dev = {k: None if v is None else cuda.to_device(np.ascontiguousarray(v))
                   for k, v in inp.arrays.items()}
            sync = cuda.synchronize
            gpu = "numba"
        sync()
        unchecked = None
        if extra.get("check_boxes"):
            def unchecked():
                return inp.call_fastconv(backend, arrays=dev, check_boxes=False)
        return Runner(impl, label, lambda: inp.call_fastconv(backend, arrays=dev, **extra),
                      sync=sync, gpu=gpu, size=size, device_call=unchecked)

    if lib == "torch":
        torch = _need("torch", 'pip install "torch==2.12.*" "torchvision==0.27.*"')
        if case.op in ("deform_conv2d", "roi_align", "roi_pool"):
            _need("torchvision.ops", 'pip install "torchvision==0.27.*"')
        if where == "cuda":
            if not torch.cuda.is_available():
                raise Unavailable("torch.cuda.is_available() is False")
            configure_torch_cuda(torch)
        tensors = {
            k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)).to(where)
            for k, v in inp.arrays.items()
        }
        sync = torch.cuda.synchronize if where == "cuda" else (lambda: None)
        sync()
        call = _torch_call(case.op, tensors, inp.params)

        def run_no_grad(call=call, torch=torch):
            with torch.no_grad():
                return call()

        return Runner(impl, case.peer_name, run_no_grad, sync=sync,
                      gpu="torch" if where == "cuda" else None, size=size)

    # scipy.ndimage.correlate / cupyx.scipy.ndimage.correlate: single-channel filters only
    filt = _cases.scipy_filter_args(inp)
    if filt is None:
        raise Unavailable(f"{impl} only does single-channel stride-1 'same' filters")
    image, kernel = filt
    if lib == "scipy":
        ndimage = _need("scipy.ndimage", "pip install scipy")
        return Runner(impl, "scipy.ndimage.correlate",
                      lambda: ndimage.correlate(image, kernel, mode="constant", cval=0.0)[
                          None, None],
                      size=size)
    from . import _dispatch

    ok, why = _dispatch.backend_status("cupy")
    if not ok:
        raise Unavailable(why)
    import cupy
    import cupyx.scipy.ndimage as cndimage

    d_image, d_kernel = cupy.asarray(image), cupy.asarray(kernel)
    return Runner(impl, "cupyx.scipy.ndimage.correlate",
                  lambda: cndimage.correlate(d_image, d_kernel, mode="constant", cval=0.0)[
                      None, None],
                  sync=cupy.cuda.Device().synchronize, gpu="cupy", size=size)


def max_rel_err(out, ref) -> float:
    """``max|out - ref| / max|ref|`` (inf on a shape mismatch)."""
    a, b = to_numpy(out), to_numpy(ref)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff


# ============================================================================== clocks


def _minor_faults() -> int | None:
    """This process's minor page faults so far (None where ``resource`` is missing)."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class HostClock:
    """Wall time of ``number`` back-to-back calls (CPU contestants).

    It also counts the minor page faults per call of each sample (``last_faults``):
    a large output that lands on fresh pages can cost more than the kernel (on the
    development VM a fault took 1-12 us, a 25.7 MB output 6272 of them), and which
    contestant gets fresh pages depends on the C library's heap, which the other
    contestant's allocations change.
    """

    device = False

    def __init__(self, sync=lambda: None):
        self.sync = sync
        self.last_faults = None

    def sample(self, fn, number: int = 1) -> float:
        f0 = _minor_faults()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        self.sync()
        t = (time.perf_counter() - t0) / number
        f1 = _minor_faults()
        self.last_faults = None if f0 is None else (f1 - f0) / number
        return t


class HostEventTimer:
    """Stand-in for CUDA events built on ``perf_counter`` (lets tests drive the GPU path)."""

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self._t0


class CupyEventTimer:
    def __init__(self):
        import cupy

        self._cupy = cupy
        self._a, self._b = cupy.cuda.Event(), cupy.cuda.Event()

    def start(self):
        self._a.record()

    def stop(self) -> float:
        self._b.record()
        self._b.synchronize()
        return self._cupy.cuda.get_elapsed_time(self._a, self._b) / 1e3


class TorchEventTimer:
    def __init__(self):
        import torch

        self._a = torch.cuda.Event(enable_timing=True)
        self._b = torch.cuda.Event(enable_timing=True)

    def start(self):
        self._a.record()

    def stop(self) -> float:
        self._b.record()
        self._b.synchronize()
        return self._a.elapsed_time(self._b) / 1e3


class NumbaEventTimer:
    def __init__(self):
        from numba import cuda

        import numba

        # the CUDA simulator runs synchronously and its events record no time
        self._host = HostEventTimer() if numba.config.ENABLE_CUDASIM else None
        if self._host is None:
            self._a, self._b = cuda.event(timing=True), cuda.event(timing=True)

    def start(self):
        if self._host is not None:
            return self._host.start()
        self._a.record()

    def stop(self) -> float:
        if self._host is not None:
            return self._host.stop()
        self._b.record()
        self._b.synchronize()
        return self._a.elapsed_time(self._b) / 1e3


EVENT_TIMERS = {"cupy": CupyEventTimer, "torch": TorchEventTimer, "numba": NumbaEventTimer,
                "host": HostEventTimer}

_SPIN_SRC = r"""
extern "C" __global__ void fastconv_bench_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


class GpuDelay:
    """Keeps the GPU busy for a while (a spin kernel on the legacy default stream).

    Enqueued before the start event of a device-time sample, it lets the host
    queue the whole call while the GPU is still spinning, so the events time
    the call's kernels back to back.  ``kind`` is ``"cupy"`` (a ``clock64``
    spin ``RawKernel``), ``"torch"`` (``torch.cuda._sleep``) or ``"none"``.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.cycles_per_s = None
        if kind == "cupy":
            import cupy

            kernel = cupy.RawKernel(_SPIN_SRC, "fastconv_bench_spin")
            self._spin = lambda c: kernel((1,), (1,), (np.int64(c),))
            timer = CupyEventTimer()
        elif kind == "torch":
            import torch

            self._spin = lambda c: torch.cuda._sleep(int(c))
            timer = TorchEventTimer()
        else:
            self._spin = None
            return
        self._spin(1000)  # compile / load
        cycles = 1 << 22
        best = math.inf
        for _ in range(3):
            timer.start()
            self._spin(cycles)
            best = min(best, timer.stop())
        self.cycles_per_s = cycles / best

    def __call__(self, seconds: float) -> None:
        if self._spin is not None and seconds > 0:
            self._spin(max(1, int(seconds * self.cycles_per_s)))


class GpuClock:
    """Host wall time of a call on an idle GPU, and device time from CUDA events."""

    device = True

    def __init__(self, sync, timer, delay=None):
        self.sync = sync
        self.timer = timer
        self.delay = delay or (lambda s: None)
        self.delay_s = 0.0

    def host_sample(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        self.sync()
        return t1 - t0

    def device_sample(self, fn) -> float:
        self.sync()
        self.delay(self.delay_s)
        self.timer.start()
        fn()
        return self.timer.stop()  # synchronises on the stop event


# ============================================================================== interleaving


@dataclass
class Contestant:
    key: str
    runner: Runner
    clock: object
    number: int = 1
    first_s: float | None = None
    output: object = None
    error: str | None = None
    samples: list = field(default_factory=list)  # seconds per call (device time on a GPU)
    host_samples: list = field(default_factory=list)  # GPU only: host wall time per call
    faults: list = field(default_factory=list)  # CPU only: minor page faults per call

    def summary(self) -> dict:
        if self.error is not None:
            return {"error": self.error}
        med = statistics.median(self.samples)
        out = {
            "ms": med * 1e3,
            "min_ms": min(self.samples) * 1e3,
            "samples_ms": [round(s * 1e3, 6) for s in self.samples],
            "number": self.number,
            "first_call_in_process_s": self.first_s,
        }
        if self.host_samples:
            out["host_ms"] = statistics.median(self.host_samples) * 1e3
            out["delay_ms"] = self.clock.delay_s * 1e3
        if self.faults:
            out["page_faults_per_call"] = statistics.median(self.faults)
        return out


def interleave(contestants, repeat: int = 7, warmup: int = 2, min_time: float = 0.0,
               keep_output: bool = True) -> list:
    """Time the contestants interleaved (A B A B ...) after a warm-up; fill their samples.

    The first warm-up call of each is timed (``first_s``, in this process) and its
    output kept for the correctness check.  A contestant that raises gets
    ``error`` set and drops out.  On a host clock a sample times ``number``
    back-to-back calls, ``number`` chosen so it lasts ``>= min_time``; on a
    GPU clock each round takes one host sample and one device sample.
    """
    live = []
    for c in contestants:
        try:
            t0 = time.perf_counter()
            out = c.runner.run_synced()
            c.first_s = time.perf_counter() - t0
            if keep_output:
                c.output = out
            del out
            for _ in range(max(0, warmup - 1)):
                c.runner.run_synced()
            if c.clock.device:
                # the spin kernel must outlast the host time of the call it hides
                host = min(c.clock.host_sample(c.runner.device_call or c.runner.call)
                           for _ in range(3))
                c.clock.delay_s = min(max(4 * host + 100e-6, 200e-6), 0.05)
            else:
                t = c.clock.sample(c.runner.call, 1)
                c.number = max(1, min(10_000, math.ceil(min_time / t))) if t > 0 else 1
            live.append(c)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            c.error = f"{type(exc).__name__}: {exc}"
    for _ in range(repeat):
        for c in list(live):
            try:
                if c.clock.device:
                    c.host_samples.append(c.clock.host_sample(c.runner.call))
                    c.samples.append(c.clock.device_sample(c.runner.device_call or c.runner.call))
                else:
                    c.samples.append(c.clock.sample(c.runner.call, c.number))
                    if c.clock.last_faults is not None:
                        c.faults.append(c.clock.last_faults)
            except Exception as exc:  # noqa: BLE001
                c.error = f"{type(exc).__name__}: {exc}"
                live.remove(c)
    return contestants


# ============================================================================== ceilings


def _best(fn, n=3) -> float:
    best = math.inf
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_ceiling(threads: int, quick: bool = False) -> dict:
    """Measured float32 matmul GFLOP/s (NumPy, torch) and copy GB/s at ``threads`` threads."""
    n = 1024 if quick else 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    out = {"nominal_gflops": CPU_NOMINAL_GFLOPS_PER_CORE * threads, "matmul_n": n}
    a @ b
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            out["numpy_matmul_gflops"] = flops / _best(lambda: a @ b) / 1e9
        out["numpy_blas_threads"] = threads
    except ImportError:
        out["numpy_matmul_gflops"] = flops / _best(lambda: a @ b) / 1e9
        out["numpy_blas_threads"] = "BLAS default (threadpoolctl not installed)"
    m = (1 << 23) if quick else (1 << 25)
    src = np.ones(m, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    out["numpy_copy_gbs"] = 2 * src.nbytes / _best(lambda: np.copyto(dst, src)) / 1e9
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch.mm(ta, tb)
        out["torch_matmul_gflops"] = flops / _best(lambda: torch.mm(ta, tb)) / 1e9
        ts, td = torch.from_numpy(src), torch.from_numpy(dst)
        td.copy_(ts)
        out["torch_copy_gbs"] = 2 * src.nbytes / _best(lambda: td.copy_(ts)) / 1e9
    # torch honours set_num_threads; NumPy's BLAS only with threadpoolctl
    out["peak_gflops"] = out.get("torch_matmul_gflops", out["numpy_matmul_gflops"])
    out["peak_by"] = "torch.mm" if "torch_matmul_gflops" in out else "numpy matmul"
    out["copy_gbs"] = max(v for k, v in out.items() if k.endswith("copy_gbs"))
    return out


def _best_events(timer, fn, n=5) -> float:
    fn()
    t = math.inf
    for _ in range(n):
        timer.start()
        fn()
        t = min(t, timer.stop())
    return t


def _gpu_ceiling_times(lib: str, copy_n: int, mm_n: int):
    """(copy seconds, matmul seconds, tf32 setting) with ``lib``'s arrays and events."""
    timer = EVENT_TIMERS[lib]()
    if lib == "cupy":
        import cupy

        src = cupy.ones(copy_n, cupy.float32)
        dst = cupy.empty_like(src)
        a = cupy.random.standard_normal((mm_n, mm_n), dtype=cupy.float32)
        b = cupy.random.standard_normal((mm_n, mm_n), dtype=cupy.float32)
        tf32 = os.environ.get("CUPY_TF32", "0")

        def copy():
            dst[...] = src
    else:
        import torch

        configure_torch_cuda(torch)
        src = torch.ones(copy_n, dtype=torch.float32, device="cuda")
        dst = torch.empty_like(src)
        a = torch.randn(mm_n, mm_n, device="cuda")
        b = torch.randn(mm_n, mm_n, device="cuda")
        tf32 = str(torch.backends.cuda.matmul.allow_tf32)

        def copy():
            dst.copy_(src)

    return _best_events(timer, copy), _best_events(timer, lambda: a @ b), tf32


def gpu_ceiling(lib: str, quick: bool = False) -> dict:
    """Measured device copy bandwidth and fp32 (no TF32) matmul throughput."""
    copy_n = (1 << 26) if quick else (1 << 28)  # floats: 256 MiB / 1 GiB
    mm_n = 4096 if quick else 8192
    copy_s, mm_s, tf32 = _gpu_ceiling_times(lib, copy_n, mm_n)
    # the arrays are gone: hand their memory back to the device
    if lib == "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    else:
        import torch

        torch.cuda.empty_cache()
    return {
        "by": lib,
        "copy_tbs": 2 * copy_n * 4 / copy_s / 1e12,
        "matmul_tflops": 2.0 * mm_n**3 / mm_s / 1e12,
        "matmul_n": mm_n,
        "tf32": tf32,
        "nominal_tflops": GPU_NOMINAL["tflops"],
        "nominal_copy_tbs": GPU_NOMINAL["copy_tbs"],
        "peak_gflops": 2.0 * mm_n**3 / mm_s / 1e9,
        "copy_gbs": 2 * copy_n * 4 / copy_s / 1e9,
    }


def gpu_device_name() -> str:
    with contextlib.suppress(Exception):
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    with contextlib.suppress(Exception):
        import torch

        return torch.cuda.get_device_name()
    with contextlib.suppress(Exception):
        from numba import cuda

        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    return "unknown GPU"


def roofline(flops: int, nbytes: int, seconds: float, ceiling: dict) -> dict:
    """Throughput of one timed call against the ceiling (roofline: min(peak, AI x bandwidth))."""
    gflops = flops / seconds / 1e9
    gbs = nbytes / seconds / 1e9
    peak, bw = ceiling["peak_gflops"], ceiling["copy_gbs"]
    intensity = flops / nbytes
    roof = min(peak, intensity * bw)
    nominal = ceiling.get("nominal_gflops") or ceiling.get("nominal_tflops", 0) * 1e3
    return {
        "gflops": gflops,
        "gbs": gbs,
        "pct_peak": 100 * gflops / peak,
        "pct_nominal": 100 * gflops / nominal if nominal else None,
        "pct_bw": 100 * gbs / bw,
        "pct_roofline": 100 * gflops / roof,
        "bound": "memory" if intensity * bw < peak else "compute",
    }


# ============================================================================== first call


def _first_call_main(case_name, size, backend, seed, check_boxes, import_s, autotune=False):
    """Runs in the fresh subprocess: time the first and second call; print JSON."""
    set_autotune(autotune)
    case = _cases.get(case_name)
    t0 = time.perf_counter()
    runner = make_runner(case, f"fastconv:{backend}", size, seed, check_boxes=check_boxes)
    t1 = time.perf_counter()
    runner.run_synced()
    t2 = time.perf_counter()
    runner.run_synced()
    t3 = time.perf_counter()
    print(_WORKER_MARK + json.dumps({
        "import_s": import_s, "setup_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2,
    }), flush=True)


def first_call(case, backend: str, size: str = "full", seed: int = 0, cold: bool = False,
               check_boxes: bool = True, timeout: float = 600.0, autotune: bool = False) -> dict:
    """First-call latency of ``backend`` on ``case`` in a fresh interpreter.

    ``cold``: empty temporary ``NUMBA_CACHE_DIR`` and ``CUPY_CACHE_DIR`` (compile
    included); otherwise the normal on-disk caches.  ``setup_s`` (input copies,
    CUDA context start) is reported apart from ``first_s``.  ``autotune``: the child
    calls ``fastconv.set_autotune(True)`` first, so its first call tunes.
    """
    code = (
        "import time; t0 = time.perf_counter(); import fastconv; "
        "t1 = time.perf_counter(); from fastconv import _bench; "
        f"_bench._first_call_main({case.name!r}, {size!r}, {backend!r}, {int(seed)}, "
        f"{bool(check_boxes)!r}, t1 - t0, {bool(autotune)!r})"
    )
    env = dict(os.environ)
    # the child imports this very fastconv, installed or not
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    with contextlib.ExitStack() as stack:
        if cold:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastconv-cold-"))
            env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba")
            env["CUPY_CACHE_DIR"] = os.path.join(tmp, "cupy")
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(_WORKER_MARK):
            return json.loads(line[len(_WORKER_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


# ============================================================================== progress


class Progress:
    """A tqdm bar on stderr when tqdm is installed, else a plain ``[i/n] what`` counter."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.n, self.enabled = total, 0, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False,
                                dynamic_ncols=True)
            except ImportError:
                pass

    @contextlib.contextmanager
    def step(self, what: str):
        self.n += 1
        if self.bar is not None:
            self.bar.set_description_str(what)
        elif self.enabled:
            print(f"[{self.n}/{self.total}] {what}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.update(1)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ============================================================================== the runs


def _peer_impl(case, want: str, device: str, peer_status: dict):
    """The peer implementation for ``case`` on ``device`` ("cpu"/"cuda"), or (None, reason)."""
    if want == "none":
        return None, "peers disabled (--peer none)"
    order = case.peers if want == "auto" else (want,)
    reasons = []
    for lib in order:
        if lib == "torch":
            need = ["torch"] + (["torchvision"] if case.op in ("deform_conv2d", "roi_align",
                                                                 "roi_pool") else [])
            bad = [f"{n}: {peer_status.get(n)}" for n in need if peer_status.get(n)]
            if bad:
                reasons.append("; ".join(bad))
                continue
            return f"torch:{device}", None
        if lib == "scipy":
            if _cases.scipy_filter_args(case.inputs("tiny")) is None:
                reasons.append("scipy: not a single-channel filter")
                continue
            if device == "cpu" and peer_status.get("scipy"):
                reasons.append(f"scipy: {peer_status['scipy']}")
                continue
            return ("scipy:cpu" if device == "cpu" else "cupyx:cuda"), None
    return None, "; ".join(reasons) or "no peer"


def _case_entry(case, size, contestants, peer: Contestant | None, target, cost, ceiling,
                tol) -> dict:
    entry = {
        "peer": peer.runner.label if peer is not None else None,
        "target": target,
        "flops": cost["flops"],
        "bytes": cost["bytes"],
    }
    ok = True
    if peer is not None:
        s = peer.summary()
        if "error" in s:
            entry["peer_error"] = s["error"]
        else:
            entry["peer_ms"] = s["ms"]
            entry["peer_samples_ms"] = s["samples_ms"]
            if "page_faults_per_call" in s:
                entry["peer_page_faults_per_call"] = s["page_faults_per_call"]
            if "host_ms" in s:
                entry["peer_host_ms"] = s["host_ms"]
            entry["peer_roofline"] = roofline(cost["flops"], cost["bytes"], s["ms"] / 1e3,
                                              ceiling)
    fc = {}
    for c in contestants:
        s = c.summary()
        backend = c.key
        if "error" in s:
            fc[backend] = s
            ok = False
            continue
        s.update(roofline(cost["flops"], cost["bytes"], s["ms"] / 1e3, ceiling))
        if entry.get("peer_ms"):
            s["ratio"] = s["ms"] / entry["peer_ms"]
            if "host_ms" in s and entry.get("peer_host_ms"):
                s["host_ratio"] = s["host_ms"] / entry["peer_host_ms"]
            s["met"] = None if target is None else bool(s["ratio"] <= target)
            if peer.output is not None and c.output is not None:
                err = max_rel_err(c.output, peer.output)
                s["max_rel_err"] = err
                if not err <= tol:
                    s["mismatch"] = True
                    ok = False
        fc[backend] = s
    entry["fastconv"] = fc
    return entry, ok


def run_cpu(cases, threads_list, backends, args, progress, peer_status, result) -> bool:
    ok = True
    section = {
        "device": cpu_model(),
        "date": result["date"],
        "versions": result["versions"],
        "machine": result["machine"],
        "threads": {},
    }
    result["cpu"] = section
    for threads in threads_list:
        set_threads(threads)
        with progress.step(f"cpu {threads}t: machine ceiling"):
            ceiling = cpu_ceiling(threads, quick=args.quick)
        block = {"ceiling": ceiling, "cases": {}}
        section["threads"][str(threads)] = block
        for case in cases:
            with progress.step(f"cpu {threads}t: {case.name}"):
                entry, case_ok = _run_host_case(case, backends, args, peer_status, ceiling,
                                                progress)
                ok &= case_ok
                block["cases"][case.name] = entry
        # the machine is shared and noisy: measure the ceiling again and keep the best,
        # then recompute the fractions of it
        with progress.step(f"cpu {threads}t: machine ceiling again"):
            again = cpu_ceiling(threads, quick=args.quick)
        for k, v in again.items():
            if isinstance(v, float) and k != "nominal_gflops":
                ceiling[k] = max(ceiling[k], v)
        for case in cases:
            _refresh_roofline(block["cases"][case.name], ceiling)
    return ok


def _refresh_roofline(entry, ceiling):
    for s in entry["fastconv"].values():
        if "ms" in s:
            s.update(roofline(entry["flops"], entry["bytes"], s["ms"] / 1e3, ceiling))
    if "peer_ms" in entry:
        entry["peer_roofline"] = roofline(entry["flops"], entry["bytes"], entry["peer_ms"] / 1e3,
                                          ceiling)


def _fastconv_contestants(case, backends, args, inputs, clock) -> list:
    """A contestant per fastconv backend on ``inputs``, timed by ``clock(runner)`` (one that
    cannot run carries its error)."""
    contestants = []
    for b in backends:
        try:
            runner = make_runner(case, f"fastconv:{b}", args.size, inputs=inputs,
                                 check_boxes=not args.skip_box_checks)
        except Unavailable as exc:
            contestants.append(_failed(b, str(exc)))
            continue
        contestants.append(Contestant(b, runner, clock(runner)))
    return contestants


def _run_host_case(case, backends, args, peer_status, ceiling, progress):
    inputs = case.inputs(args.size, args.seed)
    cost = case.cost(args.size)
    peer = None
    impl, why = _peer_impl(case, args.peer, "cpu", peer_status)
    if impl is not None:
        try:
            peer = Contestant("peer", make_runner(case, impl, args.size, inputs=inputs,
                                                  check_boxes=not args.skip_box_checks),
                              HostClock())
        except Unavailable as exc:
            why = str(exc)
    if peer is None and case.name not in _warned:
        _warned.add(case.name)
        progress.write(f"{case.name}: no peer ({why}); timing fastconv alone")
    contestants = _fastconv_contestants(case, backends, args, inputs, lambda r: HostClock())
    timed = ([peer] if peer is not None else []) + [c for c in contestants if c.error is None]
    interleave(timed, args.repeat, args.warmup, args.min_time)
    entry, ok = _case_entry(case, args.size, contestants, peer, case.target_cpu, cost, ceiling,
                            MISMATCH_TOL[np.dtype(np.float32)])
    if peer is None:
        entry["peer_missing"] = why
    for c in contestants:
        c.output = None
    return entry, ok


_warned: set = set()


def _failed(key, why):
    c = Contestant(key, Runner(f"fastconv:{key}", key, lambda: None), HostClock())
    c.error = why
    return c


@dataclass
class GpuEnv:
    """What the GPU run needs from the GPU stack (replaceable in tests)."""

    device_name: Callable[[], str] = gpu_device_name
    ceiling: Callable[[bool], dict] = None
    timer: Callable[[str], object] = None  # lib -> event timer
    delay: object = None  # GpuDelay

    @classmethod
    def real(cls, quick: bool = False) -> GpuEnv:
        libs = []
        if importlib.util.find_spec("cupy") is not None:
            libs.append("cupy")
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            libs.append("torch")
        delay, lib, notes = GpuDelay("none"), None, []
        for candidate in libs:  # the first library that can run the spin kernel
            try:
                delay, lib = GpuDelay(candidate), candidate
                break
            except Exception as exc:  # noqa: BLE001 - e.g. a CuPy built for another CUDA
                notes.append(f"{candidate}: {type(exc).__name__}: {exc}")

        def ceiling(q):
            if lib is None:
                return {"error": "neither CuPy nor torch.cuda can run here; " + "; ".join(notes)}
            try:
                return gpu_ceiling(lib, q)
            except Exception as exc:  # noqa: BLE001 - report, time the cases anyway
                return {"error": f"{type(exc).__name__}: {exc}"}

        return cls(
            device_name=gpu_device_name,
            ceiling=ceiling,
            timer=lambda gpu_lib: EVENT_TIMERS[gpu_lib](),
            delay=delay,
        )


def run_gpu(cases, backends, args, progress, peer_status, result, env: GpuEnv | None = None):
    ok = True
    env = env or GpuEnv.real(args.quick)
    with progress.step("gpu: machine ceiling"):
        ceiling = env.ceiling(args.quick)
    section = {
        "device": env.device_name(),
        "date": result["date"],
        "versions": versions(),
        "ceiling": ceiling,
        "timing": {
            "device": "CUDA events around one call, queued behind a spin kernel "
                      f"({getattr(env.delay, 'kind', 'none')}) so the kernels run back to back; "
                      "the RoI ops with check_boxes=False (the box check synchronises)",
            "host": "perf_counter around one call on an idle GPU (launch overhead; the "
                    "RoI ops with the box check unless --skip-box-checks)",
        },
        "cases": {},
    }
    result["gpu"] = section
    # the GPU backends autotune per case as cuDNN does with cudnn.benchmark = True; warm-up
    # calls tune
    autotuned = bool(set(backends) & set(TUNED_BACKENDS)) and not getattr(args, "no_autotune",
                                                                          False)
    section["autotune"] = autotuned
    previous = set_autotune(autotuned)
    try:
        for case in cases:
            ok &= _run_gpu_case(case, backends, args, progress, peer_status, env, ceiling,
                                section)
        with progress.step("gpu: host time per call on tiny inputs"):
            section["host_overhead"] = run_host_overhead(cases, backends, args, peer_status)
    finally:
        set_autotune(previous)
    return ok


#: back-to-back calls per sample of :func:`host_overhead_us`, samples, untimed calls first
HOST_OVERHEAD_CALLS, HOST_OVERHEAD_SAMPLES, HOST_OVERHEAD_WARMUP = 100, 15, 20


def host_overhead_us(runner) -> float:
    """Host microseconds per call of ``runner``: the median over samples of back-to-back
    calls (the launches queue up; the sync after each sample is not timed)."""
    for _ in range(HOST_OVERHEAD_WARMUP):
        runner.call()
    runner.sync()
    samples = []
    for _ in range(HOST_OVERHEAD_SAMPLES):
        t0 = time.perf_counter()
        for _ in range(HOST_OVERHEAD_CALLS):
            runner.call()
        samples.append((time.perf_counter() - t0) / HOST_OVERHEAD_CALLS)
        runner.sync()
    return statistics.median(samples) * 1e6


def run_host_overhead(cases, backends, args, peer_status) -> dict:
    """Host time per call on the tiny inputs of one case per op, for every GPU backend and the
    GPU peer: BENCHMARKS.md's "per-call host overhead" (targets HOST_OVERHEAD_TARGET_US).

    The RoI ops run without the box check, which synchronises (as their device times do).
    """
    out = {"method": f"median of {HOST_OVERHEAD_SAMPLES} samples of {HOST_OVERHEAD_CALLS} "
                     "back-to-back calls on the case's tiny inputs; RoI ops without the box "
                     "check", "target_us": dict(HOST_OVERHEAD_TARGET_US), "cases": {}}
    for case in first_call_cases(cases):
        inputs = case.inputs("tiny", args.seed)
        row = {"op": case.op, "shape": case.describe("tiny")}
        impls = [("peer", _peer_impl(case, args.peer, "cuda", peer_status)[0])]
        impls += [(b, f"fastconv:{b}") for b in backends]
        for key, impl in impls:
            if impl is None:
                continue
            try:
                runner = make_runner(case, impl, "tiny", inputs=inputs, check_boxes=False)
                row[key] = {"us": host_overhead_us(runner)}
            except Exception as exc:  # noqa: BLE001 - an unusable backend is reported
                row[key] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if key in HOST_OVERHEAD_TARGET_US:
                row[key]["met"] = bool(row[key]["us"] < HOST_OVERHEAD_TARGET_US[key])
        out["cases"][case.name] = row
    return out


def _run_gpu_case(case, backends, args, progress, peer_status, env, ceiling, section) -> bool:
    """Time one case on the GPU into ``section["cases"]``; False on an error or mismatch."""
    tuners = {b: importlib.import_module(f"fastconv.backends.{b}.autotune")
              for b in TUNED_BACKENDS if b in backends}
    tuned_before = {b: len(t.choices()) for b, t in tuners.items()}
    with progress.step(f"gpu: {case.name}"):
        inputs = case.inputs(args.size, args.seed)
        cost = case.cost(args.size)
        peer = None
        impl, why = _peer_impl(case, args.peer, "cuda", peer_status)
        if impl is not None:
            try:
                r = make_runner(case, impl, args.size, inputs=inputs,
                                check_boxes=not args.skip_box_checks)
                peer = Contestant("peer", r, GpuClock(r.sync, env.timer(r.gpu), env.delay))
            except Unavailable as exc:
                why = str(exc)
        if peer is None:
            progress.write(f"{case.name}: no GPU peer ({why}); timing fastconv alone")
        contestants = _fastconv_contestants(
            case, backends, args, inputs, lambda r: GpuClock(r.sync, env.timer(r.gpu), env.delay))
        timed = ([peer] if peer else []) + [c for c in contestants if c.error is None]
        interleave(timed, args.repeat, args.warmup)
        entry, case_ok = _case_entry(case, args.size, contestants, peer, case.target_gpu,
                                     cost,
                                     ceiling if "peak_gflops" in ceiling else _NO_CEILING,
                                     MISMATCH_TOL[np.dtype(np.float32)])
        if case.target_gpu_bw is not None:
            entry["target_bw_pct"] = 100 * case.target_gpu_bw
            for s in entry["fastconv"].values():
                if "pct_bw" in s and math.isfinite(s["pct_bw"]):
                    s["met_bw"] = bool(s["pct_bw"] >= 100 * case.target_gpu_bw)
        for b, s in entry["fastconv"].items():
            if "host_ms" in s and b in HOST_OVERHEAD_TARGET_US:
                s["host_us_target"] = HOST_OVERHEAD_TARGET_US[b]
        if peer is None:
            entry["peer_missing"] = why
        for b, tuner in tuners.items():
            tuned = tuner.choices()[tuned_before[b]:]
            if tuned and b in entry["fastconv"]:
                entry["fastconv"][b]["autotune"] = [
                    {k: t[k] for k in ("label", "ms", "skipped", "same_as")} for t in tuned]
        section["cases"][case.name] = entry
    return case_ok


#: the backends that ``fastconv.set_autotune`` tunes (each has an ``autotune`` module)
TUNED_BACKENDS = ("cupy", "numba_cuda")

_NO_CEILING = {"peak_gflops": math.nan, "copy_gbs": math.nan}


def first_call_cases(cases) -> list:
    """One case per op (the first selected): first-call latency is about loading that op."""
    seen, out = set(), []
    for case in cases:
        if case.op not in seen:
            seen.add(case.op)
            out.append(case)
    return out


def run_first_call(cases, backends, args, progress, result):
    out = {}
    # the GPU backends' first call as the GPU timings ran it: tuning included
    autotune = not getattr(args, "no_autotune", False)
    result["first_call"] = {"target_warm_s": FIRST_CALL_TARGET_S, "cases": out,
                            "autotune": autotune}
    for case in first_call_cases(cases):
        for b in backends:
            if b == "reference":
                continue
            entry = {}
            for kind in ("warm", "cold"):
                with progress.step(f"first call ({kind}): {case.name} {b}"):
                    tune = autotune and b in TUNED_BACKENDS
                    if kind == "warm":  # a first process makes sure the on-disk cache is filled
                        entry["prime"] = first_call(case, b, args.size, args.seed,
                                                    check_boxes=not args.skip_box_checks,
                                                    autotune=tune)
                    entry[kind] = first_call(case, b, args.size, args.seed, cold=kind == "cold",
                                             check_boxes=not args.skip_box_checks,
                                             autotune=tune)
            warm = entry["warm"].get("first_s")
            entry["met"] = None if warm is None else bool(warm < FIRST_CALL_TARGET_S)
            out.setdefault(case.name, {})[b] = entry


def run_oracle(cases, args, progress, result):
    """fastconv cpu vs the NumPy oracle, 1 thread, median of 3 (target: >= 100x faster)."""
    out = {}
    size = args.oracle_size or args.size
    result["oracle"] = {"size": size, "threads": 1, "target_speedup": ORACLE_SPEEDUP_TARGET,
                        "cases": out}
    for case in cases:
        with progress.step(f"oracle: {case.name}"):
            inputs = case.inputs(size, args.seed)
            cs = [Contestant(b, make_runner(case, f"fastconv:{b}", size, inputs=inputs),
                             HostClock()) for b in ("reference", "cpu")]
            interleave(cs, min(args.repeat, 3), 1, args.min_time)
            ref, cpu = (c.summary() for c in cs)
            e = {"reference_ms": ref.get("ms"), "cpu_ms": cpu.get("ms")}
            if "error" in ref or "error" in cpu:
                e["error"] = ref.get("error") or cpu.get("error")
            else:
                e["speedup"] = ref["ms"] / cpu["ms"]
                e["met"] = bool(e["speedup"] >= ORACLE_SPEEDUP_TARGET)
                e["max_rel_err"] = max_rel_err(cs[1].output, cs[0].output)
            out[case.name] = e


# ============================================================================== rendering


def _fmt(v, spec=".3g", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else (f"{v:.2f}" if v < 100 else f"{v:.1f}")


def _table(headers, rows, markdown=False) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _target(t):
    return "-" if t is None else f"<={t:g}"


def render(result, markdown=False) -> str:
    """The report tables (plain text, or Markdown for docs/performance.md)."""
    parts = []
    h = "### " if markdown else "== "
    v = result.get("versions", {})
    vers = ", ".join(f"{k} {v[k]}" for k in ("fastconv", "numpy", "numba", "torch",
                                              "torchvision", "scipy") if v.get(k))
    m = result.get("machine", {})
    parts.append(
        f"{'' if markdown else '# '}fastconv bench {result.get('date', '')} -- "
        f"{m.get('cpu_model', '?')}, {m.get('usable_cores', '?')} cores "
        f"(load average {m.get('loadavg', ['?'])[0]} at start, "
        f"{(m.get('loadavg_end') or ['?'])[0]} at end); {vers}; "
        f"size {result.get('size', 'full')}, median of {result.get('repeat', '?')}"
        + "".join(f"; {k}={v}" for k, v in m.get("env", {}).items() if k.startswith("OMP"))
    )
    cpu = result.get("cpu")
    if cpu:
        for threads, block in cpu["threads"].items():
            c = block["ceiling"]
            names = {"torch_matmul_gflops": "torch sgemm", "numpy_matmul_gflops": "numpy sgemm",
                     "nominal_gflops": "nominal", "torch_copy_gbs": "torch",
                     "numpy_copy_gbs": "numpy"}
            ceil = ", ".join(
                f"{names[k]} {c[k]:.0f}" for k in
                ("torch_matmul_gflops", "numpy_matmul_gflops", "nominal_gflops") if k in c
            ) + " GFLOP/s; copy " + ", ".join(
                f"{names[k]} {c[k]:.1f}" for k in
                ("torch_copy_gbs", "numpy_copy_gbs") if k in c) + " GB/s" + \
                f" (% peak: vs {c.get('peak_by', 'sgemm')})"
            parts.append(f"\n{h}CPU, {threads} thread{'s' if threads != '1' else ''} -- "
                         f"ceiling: {ceil}\n")
            headers = ["case", "backend", "peer", "peer ms", "fastconv ms", "ratio", "target",
                       "met", "GFLOP/s", "% peak", "% nominal", "GB/s", "bound",
                       "max rel err"]
            rows = []
            for name, e in block["cases"].items():
                for b, s in e["fastconv"].items():
                    if "error" in s:
                        rows.append([name, b, _short_peer(e.get("peer")), _ms(e.get("peer_ms")),
                                     "ERROR", "-", _target(e["target"]), "-", "-", "-", "-",
                                     "-", "-", "-"])
                        continue
                    rows.append([
                        name, b, _short_peer(e.get("peer")), _ms(e.get("peer_ms")), _ms(s["ms"]),
                        _fmt(s.get("ratio"), ".2f"), _target(e["target"]), _fmt(s.get("met")),
                        _fmt(s["gflops"], ".1f"), _fmt(s["pct_peak"], ".1f"),
                        _fmt(s.get("pct_nominal"), ".1f"), _fmt(s["gbs"], ".1f"), s["bound"],
                        _fmt(s.get("max_rel_err"), ".1e") + (" MISMATCH" if s.get("mismatch")
                                                             else ""),
                    ])
            parts.append(_table(headers, rows, markdown))
            parts.append(_met_line(block["cases"], markdown))
            parts.extend(_fault_lines(block["cases"]))
            parts.extend(_error_lines(block["cases"]))
    gpu = result.get("gpu")
    if gpu:
        c = gpu.get("ceiling") or {}
        ceil = (f"fp32 matmul {c['matmul_tflops']:.1f} TFLOP/s (nominal {c['nominal_tflops']:g}), "
                f"copy {c['copy_tbs']:.2f} TB/s (nominal {c['nominal_copy_tbs']:g})"
                if "matmul_tflops" in c else f"not measured {c.get('error', '')}".strip())
        parts.append(f"\n{h}GPU {gpu['device']} -- ceiling: {ceil}\n")
        headers = ["case", "backend", "peer", "peer ms", "peer host us", "fastconv ms",
                   "host us", "ratio", "target", "met", "GFLOP/s", "% peak", "% copy bw",
                   "max rel err"]
        rows = []
        for name, e in gpu["cases"].items():
            for b, s in e["fastconv"].items():
                if "error" in s:
                    rows.append([name, b, _short_peer(e.get("peer")), _ms(e.get("peer_ms")), "-",
                                 "ERROR", "-", "-", _target(e["target"]), "-", "-", "-", "-",
                                 "-"])
                    continue
                host_us = s.get("host_ms", math.nan) * 1e3
                bw = _fmt(s["pct_bw"], ".1f")
                if "met_bw" in s:
                    bw += f" ({'>=' if s['met_bw'] else '<'}{e['target_bw_pct']:.0f}%)"
                rows.append([
                    name, b, _short_peer(e.get("peer")), _ms(e.get("peer_ms")),
                    _fmt(e.get("peer_host_ms", math.nan) * 1e3, ".0f"), _ms(s["ms"]),
                    _fmt(host_us, ".0f"), _fmt(s.get("ratio"), ".2f"), _target(e["target"]),
                    _fmt(s.get("met")), _fmt(s["gflops"], ".0f"), _fmt(s["pct_peak"], ".1f"),
                    bw, _fmt(s.get("max_rel_err"), ".1e") + (" MISMATCH" if s.get("mismatch")
                                                             else ""),
                ])
        parts.append(_table(headers, rows, markdown))
        parts.append(_met_line(gpu["cases"], markdown))
        parts.extend(_error_lines(gpu["cases"]))
        parts.extend(_autotune_lines(gpu))
        overhead = {}
        for e in gpu["cases"].values():
            for b, s in e["fastconv"].items():
                if "host_ms" in s:
                    overhead.setdefault(b, []).append(s["host_ms"] * 1e3)
        for b, us in overhead.items():
            med = statistics.median(us)
            parts.append(f"host time per call, {b}: median {med:.0f} us over {len(us)} cases, "
                         f"min {min(us):.0f} us (one call on an idle GPU)")
        parts.extend(_host_overhead_lines(gpu.get("host_overhead"), markdown))
    fc = result.get("first_call")
    if fc and fc["cases"]:
        parts.append(f"\n{h}First call (fresh process; warm = normal on-disk cache, "
                     f"cold = empty cache)\n")
        headers = ["case", "backend", "import s", "setup s", "cold s", "warm s",
                   f"warm < {fc['target_warm_s']:g} s"]
        rows = []
        for name, per in fc["cases"].items():
            for b, e in per.items():
                w, c = e.get("warm", {}), e.get("cold", {})
                rows.append([name, b, _fmt(w.get("import_s"), ".2f"), _fmt(w.get("setup_s"), ".2f"),
                             _fmt(c.get("first_s"), ".2f") if "error" not in c else "ERROR",
                             _fmt(w.get("first_s"), ".2f") if "error" not in w else "ERROR",
                             _fmt(e.get("met"))])
        parts.append(_table(headers, rows, markdown))
        errs = [f"{n} {b} {k}: {e[k]['error']}" for n, per in fc["cases"].items()
                for b, e in per.items() for k in ("warm", "cold") if "error" in e.get(k, {})]
        parts.extend(errs)
    chart = text_chart(result)
    if chart:
        parts.append(f"\n{h}Chart\n")
        parts.append(f"```\n{chart}\n```" if markdown else chart)
    orc = result.get("oracle")
    if orc and orc["cases"]:
        parts.append(f"\n{h}CPU backend vs the NumPy oracle ({orc['size']} size, "
                     f"{orc.get('threads', '?')} thread)\n")
        headers = ["case", "size", "threads", "oracle ms", "cpu ms", "speedup",
                   f">= {orc['target_speedup']:g}x", "max rel err"]
        rows = [[n, orc["size"], str(orc.get("threads", "?")), _ms(e.get("reference_ms")),
                 _ms(e.get("cpu_ms")),
                 _fmt(e.get("speedup"), ".0f"), _fmt(e.get("met")),
                 _fmt(e.get("max_rel_err"), ".1e") if "error" not in e else e["error"][:60]]
                for n, e in orc["cases"].items()]
        parts.append(_table(headers, rows, markdown))
    return "\n".join(parts) + "\n"


def text_chart(result, width: int = 40) -> str:
    """Ratios as horizontal bars on a log scale (0.01 .. 10), for terminals and Markdown."""
    rows = []
    if result.get("cpu"):
        for threads, block in result["cpu"]["threads"].items():
            for name, e in block["cases"].items():
                for b, s in e["fastconv"].items():
                    rows.append((name, f"{b} {threads}t", s.get("ratio"), e["target"]))
    if result.get("gpu"):
        for name, e in result["gpu"]["cases"].items():
            for b, s in e["fastconv"].items():
                rows.append((name, b, s.get("ratio"), e["target"]))
    rows = [r for r in rows if r[2]]
    if not rows:
        return ""
    lo, hi = -2.0, 1.0  # log10 range shown

    def pos(v):
        return round((min(max(math.log10(v), lo), hi) - lo) / (hi - lo) * width)

    one = pos(1.0)
    lines = ["ratio fastconv/peer, log scale 0.01 .. 10; '|' = 1.0, 'T' = target, "
             "lower is better"]
    order = {n: i for i, n in enumerate(dict.fromkeys(r[0] for r in rows))}
    for name, who, ratio, target in sorted(rows, key=lambda r: order[r[0]]):  # stable
        bar = list("#" * pos(ratio) + " " * (width - pos(ratio)))
        if bar[one] == " ":
            bar[one] = "|"
        if target:
            bar[min(pos(target), width - 1)] = "T"
        met = "" if target is None else ("  met" if ratio <= target else "  not met")
        lines.append(f"{name:18s} {who:15s} {''.join(bar)} {ratio:6.2f}{met}")
    return "\n".join(lines)


def _host_overhead_lines(section, markdown) -> list:
    """The per-call host overhead table (tiny inputs, back-to-back calls) with its targets."""
    if not section or not section.get("cases"):
        return []
    keys = ["peer"] + [k for k in GPU_BACKENDS
                       if any(k in row for row in section["cases"].values())]
    rows = []
    for name, row in section["cases"].items():
        cells = [name]
        for k in keys:
            r = row.get(k)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("ERROR")
            else:
                cells.append(_fmt(r["us"], ".1f") + ("" if "met" not in r else
                                                     " ok" if r["met"] else " OVER"))
        rows.append(cells)
    targets = ", ".join(f"{b} < {t:g} us" for b, t in section["target_us"].items())
    return [f"\nhost us per call, {section['method']} (targets: {targets}):",
            _table(["case"] + [f"{k} us" for k in keys], rows, markdown)]


def _autotune_lines(gpu: dict) -> list:
    """What the GPU backends' autotuning chose per case (``--no-autotune``: one line)."""
    if "autotune" not in gpu:
        return []
    if not gpu["autotune"]:
        return ["GPU backends: default kernel paths (--no-autotune)"]
    lines = ["autotuned per case (fastconv.set_autotune), the arm chosen and its speed-up "
             "over the default paths:"]
    for name, e in gpu["cases"].items():
        for b in TUNED_BACKENDS:
            for t in e["fastconv"].get(b, {}).get("autotune", []):
                ms = t["ms"]
                if not ms:
                    lines.append(f"  {name} {b}: {t['label']} (the one distinct plan, not timed)")
                    continue
                first = next(iter(ms.values()))
                mine = ms.get(t["label"], math.nan)
                lines.append(f"  {name} {b}: {t['label']} (x{first / mine:.2f}, {len(ms)} plans "
                             "timed)" + (f"; skipped {', '.join(t['skipped'])}"
                                         if t["skipped"] else ""))
    return lines


def _error_lines(cases: dict) -> list:
    out = []
    for name, e in cases.items():
        if e.get("peer_error"):
            out.append(f"error: {name} peer: {e['peer_error']}")
        for b, s in e["fastconv"].items():
            if "error" in s:
                out.append(f"error: {name} {b}: {s['error']}")
            elif s.get("mismatch"):
                out.append(f"MISMATCH: {name} {b}: max rel err {s['max_rel_err']:.2e} vs the peer")
    return out


#: a contestant's median minor page faults per call from which the report names them
FAULT_NOTE_MIN = 100


def _fault_lines(cases: dict) -> list:
    """Cases whose times include many page faults per call (fresh pages for an output)."""
    out = []
    for name, e in cases.items():
        peer = e.get("peer_page_faults_per_call") or 0
        ours = {b: s.get("page_faults_per_call") or 0 for b, s in e["fastconv"].items()}
        if max(peer, *ours.values(), 0) >= FAULT_NOTE_MIN:
            who = ", ".join([f"peer {peer:.0f}"] + [f"{b} {v:.0f}" for b, v in ours.items()])
            out.append(f"page faults: {name}: median minor faults per call {who} "
                       "(fresh memory pages; the times include them)")
    return out


def _short_peer(label):
    if not label:
        return "-"
    return label.replace("torch.nn.functional.", "F.").replace("torchvision.ops.", "tv.")


def _met_line(cases: dict, markdown: bool) -> str:
    met = {}
    for e in cases.values():
        for b, s in e["fastconv"].items():
            if s.get("met") is not None:
                met.setdefault(b, []).append(s["met"])
    if not met:
        return ""
    text = "; ".join(f"{b}: {sum(v)}/{len(v)} targets met" for b, v in met.items())
    return ("\n" if markdown else "") + text


def plot(result, path: str) -> None:
    """A PNG bar chart of the ratios fastconv/peer per case (log scale, targets marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker below

    panels = []
    if result.get("cpu"):
        series = {}
        for threads, block in result["cpu"]["threads"].items():
            for name, e in block["cases"].items():
                for b, s in e["fastconv"].items():
                    label = f"{b}, {threads} thread{'s' if threads != '1' else ''}"
                    series.setdefault(label, {})[name] = (s.get("ratio"), e["target"])
        panels.append((f"CPU: {result['cpu']['device']}", series))
    if result.get("gpu"):
        series = {}
        for name, e in result["gpu"]["cases"].items():
            for b, s in e["fastconv"].items():
                series.setdefault(b, {})[name] = (s.get("ratio"), e["target"])
        panels.append((f"GPU: {result['gpu']['device']}", series))
    if not panels:
        raise ValueError("nothing to plot: the result has no CPU or GPU section")
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.5 * len(panels)), squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels, strict=True):
        names = list(dict.fromkeys(n for s in series.values() for n in s))
        width = 0.8 / max(1, len(series))
        shown = [1.0]
        for i, (label, vals) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
            ys = [vals.get(n, (None, None))[0] for n in names]
            keep = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            if not keep:  # a backend that failed every case: no bar, and no legend entry
                continue
            bars = ax.bar([x for x, _ in keep], [y for _, y in keep], width, label=label)
            ax.bar_label(bars, labels=[f"{y:.2f}" for _, y in keep], fontsize=7, padding=1)
            shown += [y for _, y in keep]
        for j, n in enumerate(names):
            t = next((v[n][1] for v in series.values() if n in v), None)
            if t:
                ax.hlines(t, j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1.2)
                shown.append(t)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        lo_y, hi_y = min(shown) / 1.6, max(shown) * 1.6
        ax.set_ylim(lo_y, hi_y)
        ax.set_yticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
                       if lo_y <= t <= hi_y])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right")
        ax.set_ylabel("time fastconv / peer (lower is better)")
        ax.set_title(f"{title} -- dashed: target")
        ax.legend(fontsize=8)
    fig.suptitle(f"fastconv {result.get('versions', {}).get('fastconv', '')} vs "
                 f"PyTorch/torchvision, {result.get('date', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ============================================================================== CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m fastconv bench``."""
    names = ", ".join(_cases.CASES)
    parser.add_argument("--cases", default="all",
                        help=f"comma-separated cases or ops (default: the BENCHMARKS.md cases); "
                             f"cases: {names}")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--threads", default=None,
                        help="comma-separated CPU thread counts, one CPU block each "
                             "(default: 1 and the number of cores)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="samples per contestant; the median is reported (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--min-time", type=float, default=0.001,
                        help="CPU: seconds a sample lasts at least (calls are repeated "
                             "back to back; default 0.001)")
    parser.add_argument("--backend", default=None,
                        help="comma-separated fastconv backends: cpu, cupy, numba_cuda, reference "
                             "(default: cpu plus the GPU backends that are usable)")
    parser.add_argument("--peer", default="auto", choices=("auto", "torch", "scipy", "none"),
                        help="peer to compare with (default auto: torch/torchvision; "
                             "scipy.ndimage for single-channel filters when torch is missing)")
    parser.add_argument("--size", default="full", choices=_cases.SIZES,
                        help="case size (default full = BENCHMARKS.md shapes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="write every number to FILE (JSON)")
    parser.add_argument("--plot", metavar="FILE", help="PNG bar chart of the ratios (matplotlib)")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    parser.add_argument("--load", metavar="FILE",
                        help="render the tables/plot from a saved --json FILE; run nothing")
    parser.add_argument("--no-first-call", action="store_true",
                        help="skip the first-call latency subprocesses")
    parser.add_argument("--oracle", action="store_true",
                        help="also time the CPU backend (1 thread) against the NumPy oracle "
                             "(target >= 100x; about 30 s at full size)")
    parser.add_argument("--oracle-size", choices=_cases.SIZES, default=None,
                        help="case size for --oracle (default: --size)")
    parser.add_argument("--no-autotune", action="store_true",
                        help="GPU: run the cupy and numba_cuda backends on their default kernel "
                             "paths instead of autotuning them per case (fastconv.set_autotune; "
                             "the peer has cudnn.benchmark = True either way)")
    parser.add_argument("--skip-box-checks", action="store_true",
                        help="call roi_align/roi_pool with check_boxes=False")
    parser.add_argument("--quick", action="store_true",
                        help="repeat 3, warmup 1, smaller ceiling runs, no first-call latency")
    parser.add_argument("--omp-passive", action="store_true",
                        help="set OMP_WAIT_POLICY=PASSIVE (for numba's and torch's OpenMP pools) "
                             "before they start: stable multi-threaded times on a busy machine")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _parse_threads(text, parser):
    import numba

    if text is None:
        cores = min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
        return sorted({1, cores})
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {text!r}")
    if not out or min(out) < 1:
        parser.error(f"--threads must be positive, got {text!r}")
    n_max = numba.config.NUMBA_NUM_THREADS
    if max(out) > n_max:
        parser.error(f"--threads {max(out)} exceeds numba's thread pool ({n_max}); "
                     f"run with NUMBA_NUM_THREADS={max(out)}")
    return out


def _parse_backends(text, parser):
    status = usable_backends() if text is None or any(
        b in (text or "") for b in GPU_BACKENDS) else {}
    if text is None:
        return ["cpu"] + [b for b in GPU_BACKENDS if status[b][0]]
    out = [b.strip() for b in text.split(",") if b.strip()]
    for b in out:
        if b not in HOST_BACKENDS + GPU_BACKENDS:
            parser.error(f"unknown backend {b!r}; choose from cpu, cupy, numba_cuda, reference")
        if b in GPU_BACKENDS and not status[b][0]:
            parser.error(f"backend {b!r} is not usable here: {status[b][1]}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv bench",
        description="Time fastconv against PyTorch/torchvision on the BENCHMARKS.md cases "
                    "(interleaved, median, ratio fastconv/peer). See docs/performance.md.",
    )
    add_arguments(parser)
    return parser


def run(args, parser=None) -> tuple[dict, bool]:
    """Run the benchmark described by parsed ``args``; return (result, all ok)."""
    parser = parser or build_parser()
    try:
        cases = _cases.select(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    threads = _parse_threads(args.threads, parser)
    backends = _parse_backends(args.backend, parser)
    host = [b for b in backends if b in HOST_BACKENDS]
    gpu = [b for b in backends if b in GPU_BACKENDS]
    if args.quick:
        args.repeat, args.warmup, args.no_first_call = min(args.repeat, 3), 1, True
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.repeat < 7 and not args.quick:
        print(f"note: --repeat {args.repeat} is below the 7 samples BENCHMARKS.md asks for",
              file=sys.stderr)
    if args.omp_passive:
        if "torch" in sys.modules:
            print("note: torch is already imported; --omp-passive may not reach its OpenMP pool",
                  file=sys.stderr)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    load = _loadavg()
    cores = os.cpu_count() or 1
    if load and load[0] > 0.5 * cores:
        print(f"note: load average {load[0]:.1f} on {cores} cores: other processes are running; "
              "multi-threaded CPU times will be noisy (ratios less so)", file=sys.stderr)
    peer_status = _peer_libs_status() if args.peer != "none" else {}
    result = {
        "schema": "fastconv-bench/1",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": machine_info(),
        "size": args.size,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "method": "interleaved A B A B after warm-up; median; ratio = fastconv / peer",
        "peers": {k: (v or "ok") for k, v in peer_status.items()},
        "cases_info": {
            c.name: {"op": c.op, "shape": c.describe(args.size), **c.cost(args.size),
                     "target_cpu": c.target_cpu, "target_gpu": c.target_gpu,
                     "target_gpu_bw": c.target_gpu_bw}
            for c in cases
        },
    }
    total = ((len(threads) * (len(cases) + 2)) if host else 0) + \
            ((len(cases) + 2) if gpu else 0) + \
            (0 if args.no_first_call else 2 * len(first_call_cases(cases)) *
             len([b for b in backends if b != "reference"])) + \
            (len(cases) if args.oracle else 0)
    progress = Progress(total, enabled=not args.no_progress)
    ok = True
    try:
        if host:
            ok &= run_cpu(cases, threads, host, args, progress, peer_status, result)
        if gpu:
            ok &= run_gpu(cases, gpu, args, progress, peer_status, result)
        if args.oracle:
            # one thread: conservative, and no thread-pool wake-ups after each oracle call
            set_threads(1)
            run_oracle(cases, args, progress, result)
        if not args.no_first_call:
            run_first_call(cases, backends, args, progress, result)
    finally:
        progress.close()
    result["versions"] = versions()  # now with the GPU libraries that were imported
    result["machine"]["loadavg_end"] = _loadavg()
    return result, ok


def main(argv=None) -> int:
    """``python -m fastconv bench [options]``; returns the exit status (1 on errors/mismatches)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list:
        for c in _cases.CASES.values():
            flag = "" if c.default else "  (extra)"
            print(f"{c.name:20s} {c.op:17s} {c.shape}{flag}")
        return 0
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib")
    if args.load:
        with open(args.load) as f:
            result, ok = json.load(f), True
    else:
        result, ok = run(args, parser)
    text = render(result)
    print(text, end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_jsonable(result), f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render(result, markdown=True))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
