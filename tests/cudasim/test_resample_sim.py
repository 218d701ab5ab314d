"""The numba.cuda resampling kernels, and fastconv.upsample / fastconv.image on numba device
arrays, run by the CUDA simulator against the CPU backend and the oracle.

Tiny shapes; the session fixture of ``conftest.py`` shrinks the launches (8-thread blocks,
grids capped at 2) so that every grid-stride loop runs several times.
"""

import numpy as np
import pytest
from numba import cuda

from fastconv import image, reference_image
from fastconv.backends.cpu import resample as cpu
from fastconv.backends.numba_cuda import resample as sim
from fastconv.upsample import upsample

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host()


def data(shape, dtype, seed=0, nan=False):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if nan:
        a.flat[3] = np.nan
    return a


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_and_lerp_kernels(dtype):
    x = data((2, 3, 4, 5), dtype, nan=True)
    iy = np.array([0, -1, 3, 3, 1], np.int64)
    ix = np.array([4, 0, -1, 2], np.int64)
    for cval in (0.0, 0.5):
        a = host(sim.gather(dev(x), dev(iy), dev(ix), cval=cval))
        np.testing.assert_array_equal(a, cpu.gather(x, iy, ix, cval=cval))
    wdt = np.float64 if dtype == np.float64 else np.float32
    iy2 = np.array([[0, 1, -1, 3], [1, 2, 0, 3]], np.int64)
    wy = np.array([[1.0, 0.25, 0.5, 1.0], [0.0, 0.75, 0.5, 0.0]], wdt)
    ix2 = np.array([[0, 4, 2], [1, -1, 2]], np.int64)
    wx = np.array([[0.5, 0.9, 1.0], [0.5, 0.1, 0.0]], wdt)
    a = host(sim.lerp(dev(x), dev(iy2), dev(wy), dev(ix2), dev(wx), cval=-1.0))
    b = cpu.lerp(x, iy2, wy, ix2, wx, cval=-1.0)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_sepfilter_kernel(dtype, dilation):
    x = data((1, 2, 6, 7), dtype)
    wy = np.array([0.25, 0.5, 0.25], dtype)
    wx = np.array([1.0, -2.0], dtype)
    ty = image.filter_table(6, dilation[0] * 2 + 1, "constant")
    tx = image.filter_table(7, dilation[1] + 1, "mirror")
    for cval in (0.0, 2.0):
        a = host(sim.sepfilter(dev(x), dev(wy), dev(ty), dev(wx), dev(tx), dilation=dilation,
                               cval=cval))
        b = cpu.sepfilter(x, wy, ty, wx, tx, dilation=dilation, cval=cval)
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def test_glue_kernels():
    rng = np.random.default_rng(1)
    for img, cax, scale, clip in [
        ((rng.random((4, 5)) * 255).astype(np.uint8), None, 1 / 255, None),
        ((rng.random((3, 4, 5)) * 200 - 100).astype(np.int8), 1, 1 / 127, -1.0),
        (rng.random((4, 5, 3)) > 0.5, 2, 1.0, None),
        (rng.random((2, 4, 5)).astype(np.float32), 0, 1.0, None),
    ]:
        for dt in (np.float32, np.float64):
            a = host(sim.to_planes(dev(img), channel_axis=cax, dtype=dt, scale=scale,
                                   clip_low=clip))
            b = cpu.to_planes(img, channel_axis=cax, dtype=dt, scale=scale, clip_low=clip)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-6)
    planes = rng.random((2, 3, 4, 5))
    for cax in (None, 0, 1, 2):
        p = planes[:, :1] if cax is None else planes
        a = host(sim.from_planes(dev(p), channel_axis=cax, ndim=3 if cax is not None else 2))
        np.testing.assert_array_equal(a, cpu.from_planes(p, channel_axis=cax, ndim=3
                                                         if cax is not None else 2))
    q = rng.random((2, 3, 4, 5))
    np.testing.assert_array_equal(host(sim.subtract(dev(planes), dev(q))), planes - q)
    for cax in (0, 1, 2):
        np.testing.assert_array_equal(
            host(sim.from_planes(dev(planes), dev(q), channel_axis=cax, ndim=3)),
            cpu.from_planes(planes, q, channel_axis=cax, ndim=3))
    np.testing.assert_array_equal(cpu.from_planes(planes, q, channel_axis=-1, ndim=3),
                                  np.moveaxis(planes - q, 1, 3))
    np.testing.assert_array_equal(host(sim.concat(dev(planes), dev(q[:1]))),
                                  np.concatenate([planes, q[:1]]))
    x = planes.copy()
    x[0, 0, 0, 0] = np.nan
    assert sim.minmax(dev(x)) == cpu.minmax(x)
    assert all(np.isnan(v) for v in sim.minmax(dev(np.full((1, 1, 2, 2), np.nan))))
    np.testing.assert_array_equal(host(sim.clip(dev(x), lo=0.2, hi=0.7)),
                                  cpu.clip(x, lo=0.2, hi=0.7))


# ----------------------------------------------------------------------------- public API


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_on_device_arrays(dtype):
    x = data((1, 2, 4, 5), dtype, nan=True)
    for kw in [dict(size=(7, 3)), dict(scale_factor=1.5, mode="bilinear"),
               dict(size=(3, 8), mode="bilinear", align_corners=True),
               dict(scale_factor=(2, 0.7), mode="bilinear")]:
        out = upsample(dev(x), **kw)
        assert hasattr(out, "copy_to_host"), type(out)  # a device array comes back
        a = host(out)
        ref = upsample(x, **kw, backend="reference")
        np.testing.assert_array_equal(np.isnan(a), np.isnan(ref))
        np.testing.assert_allclose(a, ref, rtol=TOL[dtype], atol=TOL[dtype], err_msg=str(kw))


def test_image_functions_on_device_arrays():
    rng = np.random.default_rng(2)
    rgb = rng.random((6, 7, 3))
    u8 = (rng.random((5, 6)) * 255).astype(np.uint8)
    flow = rng.normal(size=(2, 6, 7))
    boxes = np.array([[0, 0, 3, 4], [1, 2, 6, 7]])
    cases = [
        ("pyramid_reduce", rgb, (), dict(channel_axis=-1)),
        ("pyramid_expand", rgb, (), dict(channel_axis=1, mode="constant", cval=1.5)),
        ("pyramid_laplacian", u8, (), {}),
        ("atrous_wavelet", u8, (2,), dict(mode="wrap")),
        ("correlate", u8, (np.ones((2, 3)), 2), dict(mode="mirror")),
        ("warp_by_flow", rgb, (dev(flow),), dict(channel_axis=-1)),
        ("crop_regions", rgb, (boxes, (2, 3)), dict(channel_axis=-1)),
    ]
    for name, img, args, kw in cases:
        out = getattr(image, name)(dev(img), *args, **kw)
        layers = [host(a) for a in out] if name == "pyramid_laplacian" else [host(out)]
        host_args = [host(a) if hasattr(a, "copy_to_host") else a for a in args]
        ref = getattr(image, name)(img, *host_args, backend="reference", **kw)
        ref = list(ref) if name == "pyramid_laplacian" else [ref]
        assert len(layers) == len(ref), name
        for a, b in zip(layers, ref, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=name)
    # the oracle itself, directly: nearest upsampling of a device array
    x = data((1, 1, 3, 3), np.float64)
    np.testing.assert_array_equal(host(upsample(dev(x), size=5)),
                                  reference_image.upsample(x, (5, 5), None, "nearest", False))
