"""GPU-only checks of the cupy backend (skipped cleanly without CuPy or a CUDA device).

* float16 on the cupy backend against the oracle;
* the cupy backend with autotuning on against the oracle;
* cpu vs cupy vs numba_cuda on the same random configurations;
* tensors of more than 2**31 elements through each kernel family (64-bit indexing),
  checked against the same op on a small crop (where the GPU has the memory);
* PyTorch CUDA tensors accepted zero-copy (skipped without torch);
* work runs on CuPy's current stream;
* a warm process loads every kernel from CuPy's disk cache (no NVRTC call);
* host overhead per call of the backend functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy", reason="CuPy not installed")


def _gpu_count() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no driver / no device
        return 0


if _gpu_count() < 1:
    pytest.skip("no CUDA device", allow_module_level=True)

import fastconv  # noqa: E402
from fastconv import _dispatch, _random_cases  # noqa: E402
from fastconv.backends import cupy as cb  # noqa: E402

N_CASES = int(os.environ.get("FASTCONV_GPU_CASES", "40"))


def _rng_pick(seed):
    rng = np.random.default_rng(seed)

    def pick(lo, hi):
        return int(rng.integers(lo, hi + 1))

    return rng, pick


# ----------------------------------------------------------------------------- float16


@pytest.mark.parametrize("op", _random_cases.OPS)
def test_float16_vs_oracle(op):
    rng, pick = _rng_pick(1234)
    dtype = np.dtype(np.float16)
    tol = _random_cases.TOLERANCE[dtype]
    for _ in range(N_CASES):
        case = _random_cases.GENERATORS[op](pick, rng, dtype)
        err, out, ref = _random_cases.run_case(case, "cupy")
        assert out.dtype == dtype
        assert err <= tol, f"float16 relative error {err:.3g} > {tol} for {case.describe()}"


# ----------------------------------------------------------------------------- autotune


@pytest.mark.parametrize("backend", ["cupy", "numba_cuda"])
@pytest.mark.parametrize("op", _random_cases.OPS)
def test_autotuned_calls_vs_oracle(op, backend):
    """With fastconv.set_autotune(True) every problem is tuned on its first call (all arms
    run on the GPU) and its result, from the arm chosen, matches the oracle."""
    import importlib

    ok, why = _dispatch.backend_status(backend)
    if not ok:
        pytest.skip(why)
    autotune = importlib.import_module(f"fastconv.backends.{backend}.autotune")
    if op not in autotune.ARMS:
        pytest.skip(f"{backend} has no arms for {op}")
    rng, pick = _rng_pick(4321)
    dtype = np.dtype(np.float32)
    tol = _random_cases.TOLERANCE[dtype]
    previous = fastconv.set_autotune(True)
    try:
        before = len(autotune.choices())
        for _ in range(max(N_CASES // 4, 5)):
            case = _random_cases.GENERATORS[op](pick, rng, dtype)
            err, out, ref = _random_cases.run_case(case, backend)
            assert err <= tol, f"autotuned: relative error {err:.3g} > {tol} for {case.describe()}"
        tuned = autotune.choices()[before:]
        assert tuned and {t["op"] for t in tuned} == {op}
        # the chosen arm was timed, or it was the one distinct plan (nothing timed)
        assert all((t["label"] in t["ms"] or not t["ms"]) and not t["skipped"]
                   for t in tuned), tuned
    finally:
        fastconv.set_autotune(previous)


# ----------------------------------------------------------------------------- three-way


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", _random_cases.OPS)
def test_three_way_cross_check(op, dtype):
    backends = ["cpu", "cupy"]
    ok, why = _dispatch.backend_status("numba_cuda")
    if ok:
        backends.append("numba_cuda")
    dtype = np.dtype(dtype)
    tol = _random_cases.TOLERANCE[dtype]
    rng, pick = _rng_pick(99)
    for _ in range(N_CASES):
        case = _random_cases.GENERATORS[op](pick, rng, dtype)
        outs = {}
        for b in backends:
            err, out, ref = _random_cases.run_case(case, b)
            assert err <= tol, f"{b} vs oracle: {err:.3g} for {case.describe()}"
            outs[b] = np.asarray(out, np.float64)
        for a in backends:
            for b in backends:
                if a < b:
                    err = _random_cases.relative_error(outs[a], outs[b])
                    assert err <= 2 * tol, f"{a} vs {b}: {err:.3g} for {case.describe()}"
    if not ok:
        pytest.skip(f"cpu and cupy agree; numba_cuda unavailable: {why}")


# ----------------------------------------------------------------------------- > 2**31 elements

BIG = 2**31 + 2**22  # elements: just past the int32 range


def _need(nbytes):
    free = cupy.cuda.runtime.memGetInfo()[0]
    if free < nbytes * 1.1:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of GPU memory, {free / 2**30:.1f} free")


def _fill_normal(shape, dtype, seed):
    """A large random array, made slab by slab (no float32 copy of the whole)."""
    a = cupy.empty(shape, dtype)
    flat = a.reshape(shape[0] * shape[1], -1)
    gen = cupy.random.default_rng(seed)
    for i in range(flat.shape[0]):
        flat[i] = gen.standard_normal(flat.shape[1], dtype=cupy.float32).astype(dtype)
    return a


def _close(big, small, atol):
    big, small = cupy.asnumpy(big).astype(np.float64), cupy.asnumpy(small).astype(np.float64)
    assert big.shape == small.shape
    err = np.abs(big - small).max()
    assert err <= atol, f"max abs difference {err:.3g} (> {atol})"


@pytest.mark.slow
def test_large_conv_depthwise_and_gemm():
    # depthwise (tiled kernel): input and output of 2**31+ elements
    H, W = 32768, BIG // (2 * 32768) + 1
    _need(2 * 2 * H * W * 2)
    x = _fill_normal((1, 2, H, W), cupy.float16, 1)
    assert x.size > 2**31
    w = cupy.asarray(np.random.default_rng(0).standard_normal((2, 1, 3, 3)), cupy.float16)
    out = fastconv.conv2d(x, w, padding=1, groups=2)
    crop = fastconv.conv2d(x[:, 1:, -40:, -50:], w[1:], padding=1)
    _close(out[:, 1:, -39:-1, -49:-1], crop[:, :, 1:-1, 1:-1], 2e-2)
    del out, crop

    # implicit GEMM (1x1, 32 output channels): input 2**31+ elements
    x2 = x.reshape(1, 64, H // 32, W)
    w2 = cupy.asarray(np.random.default_rng(1).standard_normal((32, 64, 1, 1)) / 8, cupy.float16)
    out = fastconv.conv2d(x2, w2)
    crop = fastconv.conv2d(x2[:, :, -3:, -70:], w2)
    _close(out[:, :, -3:, -70:], crop, 2e-2)


@pytest.mark.slow
def test_large_conv_transpose():
    # output of 2**31+ elements; kernel 2 = stride 2: each output pixel sees one input pixel
    H, W = 16384, BIG // (2 * 4 * 16384) + 1
    _need((2 * H * W + 2 * 4 * H * W) * 2)
    x = _fill_normal((1, 2, H, W), cupy.float16, 2)
    w = cupy.asarray(np.random.default_rng(2).standard_normal((2, 2, 2, 2)), cupy.float16)
    out = fastconv.conv_transpose2d(x, w, stride=2)
    assert out.size > 2**31
    crop = fastconv.conv_transpose2d(x[:, :, -20:, -30:], w, stride=2)
    _close(out[:, :, -40:, -60:], crop, 2e-2)


@pytest.mark.slow
def test_large_deform():
    # input and offset of 2**31+ elements (1x1 kernel, offsets within half a pixel)
    N, H, W = 2, 32768, BIG // (2 * 32768) + 1
    _need((N * H * W * (1 + 2 + 1 + 1)) * 2 + 2**30)
    x = _fill_normal((N, 1, H, W), cupy.float16, 3)
    off = cupy.empty((N, 2, H, W), cupy.float16)
    gen = cupy.random.default_rng(4)
    for n in range(N):
        for c in range(2):
            off[n, c] = (gen.random((H, W), dtype=cupy.float32) - 0.5).astype(cupy.float16)
    assert x.size > 2**31 and off.size > 2**31
    w = cupy.asarray([[[[1.5]]]], cupy.float16)
    out = fastconv.deform_conv2d(x, off, w)
    crop = fastconv.deform_conv2d(x[1:, :, -64:, -64:], off[1:, :, -64:, -64:], w)
    # positions near 32768 round to 2**-9 px in float32: a few 1e-2 of difference
    _close(out[1:, :, -62:-1, -62:-1], crop[:, :, 2:-1, 2:-1], 5e-2)


@pytest.mark.slow
def test_large_roi():
    # float32 input of 2**31+ elements; boxes at the far (bottom-right) end of the last channel
    H, W = 32768, BIG // (2 * 32768) + 1
    _need(2 * H * W * 4)
    x = _fill_normal((1, 2, H, W), cupy.float32, 5)
    y0, x0 = H - 100, W - 100
    local = np.array([[0, 10, 12, 60, 70], [0, 3.5, 5.5, 99, 99], [0, 40, 40, 41.5, 44]],
                     np.float64)
    shifted = local.copy()
    shifted[:, [1, 3]] += x0
    shifted[:, [2, 4]] += y0
    bx = cupy.asarray(shifted, cupy.float32)
    bl = cupy.asarray(local, cupy.float32)
    sub = x[:, :, y0:, x0:]
    out = fastconv.roi_pool(x, bx, (5, 4))
    crop = fastconv.roi_pool(sub, bl, (5, 4))
    _close(out, crop, 0.0)
    out = fastconv.roi_align(x, bx, (5, 4), sampling_ratio=2, aligned=True)
    crop = fastconv.roi_align(sub, bl, (5, 4), sampling_ratio=2, aligned=True)
    _close(out, crop, 5e-2)  # sample positions round differently at 32768 than at 50


# ----------------------------------------------------------------------------- torch


def test_torch_cuda_tensors_zero_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 8, 17, 19, device="cuda", generator=g)
    w = torch.randn(16, 4, 3, 3, device="cuda", generator=g)
    b = torch.randn(16, device="cuda", generator=g)
    native = cb.as_native(x)
    assert native.data.ptr == x.data_ptr(), "as_native copied the torch tensor"
    out = fastconv.conv2d(x, w, b, padding=1, groups=2)
    assert isinstance(out, cupy.ndarray)
    ref = torch.nn.functional.conv2d(x, w, b, padding=1, groups=2)
    np.testing.assert_allclose(cupy.asnumpy(out), ref.cpu().numpy(), rtol=1e-4, atol=1e-4)
    boxes = torch.tensor([[0, 1.0, 2.0, 12.0, 15.0], [1, 0.0, 0.0, 18.0, 16.0]], device="cuda")
    out = fastconv.roi_align(x, boxes, 3, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    try:
        import torchvision
    except ImportError:
        return
    ref = torchvision.ops.roi_align(x, boxes, 3, 1.0, 2, True)
    np.testing.assert_allclose(cupy.asnumpy(out), ref.cpu().numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- streams

_SPIN = r"""
extern "C" __global__ void spin_then_fill(float* x, long long n, long long cycles, float v) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        long long t0 = clock64();
        while (clock64() - t0 < cycles) { }
    }
    __syncthreads();
    if (blockIdx.x == 0)
        for (long long i = threadIdx.x; i < n; i += blockDim.x) x[i] = v;
}
"""


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "deform_conv2d", "roi_align",
                                "roi_pool"])
def test_runs_on_current_stream(op):
    """On a non-blocking stream, the op must wait for earlier work on that stream.

    A slow kernel fills the input with 1.0 on stream ``s``; the op, called inside
    ``with s``, must see those values.  Had the op been launched on another stream
    it would read the input before the fill (zeros).
    """
    spin = cupy.RawKernel(_SPIN, "spin_then_fill")
    x = cupy.zeros((1, 4, 16, 16), cupy.float32)
    w = cupy.ones((4, 4, 3, 3), cupy.float32)
    off = cupy.zeros((1, 18, 14, 14), cupy.float32)
    boxes = cupy.asarray([[0, 1.0, 1.0, 9.0, 9.0]], cupy.float32)
    calls = {
        "conv2d": lambda: fastconv.conv2d(x, w),
        "conv_transpose2d": lambda: fastconv.conv_transpose2d(x, w),
        "deform_conv2d": lambda: fastconv.deform_conv2d(x, off, w),
        "roi_align": lambda: fastconv.roi_align(x, boxes, 2),
        "roi_pool": lambda: fastconv.roi_pool(x, boxes, 2),
    }
    calls[op]()  # compile and warm up outside the timed stream
    cupy.cuda.Device().synchronize()
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        x.fill(0)
        spin((1,), (256,), (x, np.int64(x.size), np.int64(200_000_000), np.float32(1.0)))
        out = calls[op]()
    s.synchronize()
    # all-ones input and weights: 3x3x4 taps (conv, deform with zero offsets, the
    # transposed conv's interior), or the mean / max of ones (roi ops)
    expected = {"conv2d": 36.0, "conv_transpose2d": 36.0, "deform_conv2d": 36.0,
                "roi_align": 1.0, "roi_pool": 1.0}[op]
    centre = float(cupy.asnumpy(out)[0, 0, out.shape[2] // 2, out.shape[3] // 2])
    assert centre == pytest.approx(expected), f"{op} did not wait for the stream's earlier work"


# ----------------------------------------------------------------------------- disk cache


def test_warm_process_does_not_recompile(tmp_path):
    """Every kernel of a warm cache loads without NVRTC (cupy#10173-style misses)."""
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path / "cache"))
    warm = "from fastconv.backends.cupy import _module; _module.warm_up()"
    check = textwrap.dedent(
        """
        import time
        from cupy.cuda import compiler
        def boom(*a, **k):
            raise AssertionError("NVRTC was called in a warm process")
        compiler._compile_using_nvrtc_no_warning = boom
        compiler.compile_using_nvrtc = boom
        from fastconv.backends.cupy import _module
        t = time.perf_counter()
        _module.warm_up()
        print(f"loaded every kernel from the disk cache in {time.perf_counter() - t:.2f} s")
        """
    )
    subprocess.run([sys.executable, "-c", warm], env=env, check=True)
    r = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)


# ----------------------------------------------------------------------------- host overhead


def test_host_overhead_per_call():
    """Host time per backend call (launch is asynchronous); the target is < 20 us."""
    from fastconv.backends.cupy import conv, roi

    x = cupy.ones((1, 8, 16, 16), cupy.float32)
    w = cupy.ones((8, 8, 3, 3), cupy.float32)
    rois = cupy.asarray([[0, 1.0, 1.0, 9.0, 9.0]], cupy.float32)
    calls = {
        "conv2d": lambda: conv.conv2d(x, w, None, stride=(1, 1), padding=(1, 1),
                                      dilation=(1, 1), groups=1, out_hw=(16, 16)),
        "roi_align": lambda: roi.roi_align(x, rois, output_size=(7, 7), spatial_scale=1.0,
                                           sampling_ratio=2, aligned=True),
    }
    for name, f in calls.items():
        for _ in range(20):
            f()
        cupy.cuda.Device().synchronize()
        times = []
        for _ in range(200):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        cupy.cuda.Device().synchronize()
        us = float(np.median(times)) * 1e6
        print(f"{name}: {us:.1f} us host time per backend call")
        assert us < 100, f"{name}: {us:.1f} us per call"
