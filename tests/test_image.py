"""fastconv.image against scikit-image / SciPy, against the oracle on every backend, and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import image
from fastconv._random_cases import to_backend, to_host

skimage = pytest.importorskip("skimage")
ndi = pytest.importorskip("scipy.ndimage")
from skimage import data, measure, transform  # noqa: E402
from skimage.util import img_as_float  # noqa: E402

PYRAMIDS = ("pyramid_reduce", "pyramid_expand", "pyramid_gaussian", "pyramid_laplacian")


def _layers(out):
    return [np.asarray(a) for a in out] if not isinstance(out, np.ndarray) else [out]


def _run(name, img, *args, backend="cpu", **kw):
    """``image.<name>`` on ``backend`` (inputs moved there), host results as a list of layers."""
    out = getattr(image, name)(to_backend(img, backend), *args, backend=backend, **kw)
    if name in ("pyramid_gaussian", "pyramid_laplacian"):
        return [to_host(a) for a in out]
    return [to_host(out)]


def _sk(name, img, *args, **kw):
    return _layers(getattr(transform, name)(img, *args, **kw))


def _close(a_layers, b_layers, atol):
    assert len(a_layers) == len(b_layers)
    for a, b in zip(a_layers, b_layers, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {
        "camera": data.camera(),  # 512 x 512 uint8
        "astronaut": data.astronaut()[::2, ::2],  # 256 x 256 x 3 uint8
        "coins": data.coins()[::3, ::3],  # 101 x 128 uint8
        "odd": rng.random((13, 9)),
        "thin": rng.random((1, 7)),
    }


# ----------------------------------------------------------------------------- pyramids


@pytest.mark.parametrize("name", PYRAMIDS)
def test_pyramids_match_skimage_on_data_images(images, name):
    for key in ("camera", "astronaut", "coins"):
        img = images[key]
        if name == "pyramid_expand" and key == "camera":
            img = img[::2, ::2]
        ca = -1 if img.ndim == 3 else None
        _close(_run(name, img, channel_axis=ca), _sk(name, img, channel_axis=ca), 1e-6)


@pytest.mark.parametrize("mode", ["reflect", "constant", "wrap"])
@pytest.mark.parametrize("order", [0, 1])
def test_pyramid_parameters_match_skimage(images, mode, order):
    img = images["odd"]
    for name in PYRAMIDS:
        kw = dict(mode=mode, order=order, cval=0.3)
        _close(_run(name, img, **kw), _sk(name, img, **kw), 1e-12)
    kw = dict(mode=mode, order=order, cval=-0.2, sigma=1.1)
    _close(_run("pyramid_reduce", img, 3.3, **kw), _sk("pyramid_reduce", img, 3.3, **kw), 1e-12)
    _close(_run("pyramid_expand", img, 2.5, **kw), _sk("pyramid_expand", img, 2.5, **kw), 1e-12)
    _close(_run("pyramid_gaussian", img, 2, 1.7, **kw),
           _sk("pyramid_gaussian", img, 2, 1.7, **kw), 1e-12)
    _close(_run("pyramid_laplacian", img, 3, 1.5, **kw),
           _sk("pyramid_laplacian", img, 3, 1.5, **kw), 1e-12)
    thin = images["thin"]
    for name in PYRAMIDS:
        _close(_run(name, thin, mode=mode, order=order), _sk(name, thin, mode=mode, order=order),
               1e-12)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "bool", "float16", "float32"])
@pytest.mark.parametrize("preserve_range", [False, True])
def test_pyramid_dtype_rules(dtype, preserve_range):
    rng = np.random.default_rng(1)
    raw = rng.random((11, 14, 2))
    if dtype == "bool":
        img = raw > 0.5
    elif dtype.startswith(("uint", "int")):
        info = np.iinfo(dtype)
        img = (info.min + raw * (info.max - info.min)).astype(dtype)
    else:
        img = raw.astype(dtype)
    for name in PYRAMIDS:
        kw = dict(channel_axis=-1, preserve_range=preserve_range)
        a, b = _run(name, img, **kw), _sk(name, img, **kw)
        atol = 1e-5 * max(1.0, float(np.abs(b[0]).max())) if dtype in ("float16", "float32") \
            else 1e-9 * max(1.0, float(np.abs(b[0]).max()))
        _close(a, b, atol)


@pytest.mark.parametrize("channel_axis", [0, 1, 2, -1, -3])
def test_channel_axis_anywhere(channel_axis):
    rng = np.random.default_rng(2)
    img = np.moveaxis(rng.random((10, 9, 3)), -1, channel_axis)
    for name in PYRAMIDS:
        _close(_run(name, img, channel_axis=channel_axis),
               _sk(name, img, channel_axis=channel_axis), 1e-12)
    out = to_host(image.atrous_wavelet(img, 2, channel_axis=channel_axis))
    assert out.shape == (3,) + img.shape
    out = to_host(image.crop_regions(img, [[1, 2, 6, 7]], (3, 4), channel_axis=channel_axis))
    ref_shape = list(img.shape)
    spatial = [a for a in range(3) if a != channel_axis % 3]
    ref_shape[spatial[0]], ref_shape[spatial[1]] = 3, 4
    assert out.shape == (1, *ref_shape)


def test_fused_reduction_equals_the_two_steps():
    """The CPU's one-pass smooth + resize gives bit for bit the two separate kernels."""
    from fastconv.backends.cpu import resample

    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        x = rng.random((2, 3, 23, 17)).astype(dtype)
        for factor in (1.3, 1.5, 2, 3.3, 7):
            for mode, rmode in image.PYRAMID_MODES.items():
                if mode == "constant":
                    continue
                taps = image.gaussian_taps(2 * factor / 6).astype(dtype)
                ty = image.filter_table(23, len(taps), rmode[0])
                tx = image.filter_table(17, len(taps), rmode[0])
                out_hw = (int(np.ceil(23 / factor)), int(np.ceil(17 / factor)))
                iy, wy = image.resize_tables(23, out_hw[0], 1, rmode[1], dtype)
                ix, wx = image.resize_tables(17, out_hw[1], 1, rmode[1], dtype)
                fused = resample.smooth_lerp(x, taps, ty, tx, iy, wy, ix, wx, cval=0.0)
                smooth = resample.sepfilter(x, taps, ty, taps, tx, dilation=(1, 1), cval=0.0)
                two = resample.lerp(smooth, iy, wy, ix, wx, cval=0.0)
                np.testing.assert_array_equal(fused, two, err_msg=f"{factor} {mode}")


def test_multithreaded_kernels_agree(monkeypatch):
    """Small work runs on one thread; forcing the thread pool gives the same bits."""
    from fastconv.backends.cpu import resample

    rng = np.random.default_rng(10)
    img = rng.random((37, 29, 3))
    calls = [
        lambda: list(image.pyramid_laplacian(img, channel_axis=-1)),
        lambda: list(image.pyramid_gaussian(img, channel_axis=-1)),
        lambda: [image.pyramid_expand(img, channel_axis=-1, mode="constant", cval=2.0)],
        lambda: [image.correlate(img, np.ones((3, 2)), 3, channel_axis=-1)],
        lambda: [image.atrous_wavelet(img, 3, channel_axis=-1)],
    ]
    serial = [f() for f in calls]
    monkeypatch.setattr(resample, "PARALLEL_MIN_WORK", 0)
    for f, ref in zip(calls, serial, strict=True):
        for a, b in zip(f(), ref, strict=True):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- correlate


def _dilated(kernel, d):
    kh, kw = kernel.shape
    out = np.zeros((d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1))
    out[::d[0], ::d[1]] = kernel
    return out


@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror", "wrap",
                                  "grid-mirror", "grid-constant", "grid-wrap"])
def test_correlate_matches_scipy(mode):
    rng = np.random.default_rng(3)
    img = rng.random((23, 17))
    for kshape in [(3, 3), (2, 4), (1, 1), (5, 2)]:
        k = rng.standard_normal(kshape)
        for d in [1, 2, (3, 1), (9, 12)]:
            dd = (d, d) if isinstance(d, int) else d
            a = to_host(image.correlate(img, k, d, mode=mode, cval=0.7))
            b = ndi.correlate(img, _dilated(k, dd), mode=mode, cval=0.7)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=f"{kshape} {d}")


def test_correlate_on_camera_and_rgb(images):
    cam = images["camera"]
    k = np.array([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    a = image.correlate(cam, k, dilation=4)
    b = ndi.correlate(img_as_float(cam), _dilated(k, (4, 4)))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    a = image.correlate(cam, k, dilation=4, preserve_range=True)
    np.testing.assert_allclose(a, ndi.correlate(cam.astype(float), _dilated(k, (4, 4))),
                               rtol=0, atol=1e-9)
    rgb = images["astronaut"].astype(np.float32) / 255
    a = image.correlate(rgb, k, 3, channel_axis=-1)
    assert a.dtype == np.float32
    b = np.stack([ndi.correlate(rgb[..., c], _dilated(k, (3, 3))) for c in range(3)], -1)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- atrous wavelet


@pytest.mark.parametrize("mode", ["reflect", "mirror", "constant", "wrap", "nearest"])
def test_atrous_wavelet_matches_scipy_and_sums_back(mode):
    rng = np.random.default_rng(4)
    img = rng.random((20, 15))
    levels = 4
    w = image.atrous_wavelet(img, levels, mode=mode)
    assert w.shape == (levels + 1, 20, 15) and w.dtype == np.float64
    h = np.array([1, 4, 6, 4, 1]) / 16
    c = img
    for j in range(levels):
        hj = np.zeros(4 * 2**j + 1)
        hj[:: 2**j] = h
        nxt = ndi.correlate1d(ndi.correlate1d(c, hj, axis=0, mode=mode), hj, axis=1, mode=mode)
        np.testing.assert_allclose(w[j], c - nxt, rtol=0, atol=1e-14)
        c = nxt
    np.testing.assert_allclose(w[levels], c, rtol=0, atol=1e-14)
    # the planes telescope back to the image (exactly, up to rounding)
    np.testing.assert_allclose(w.sum(axis=0), img, rtol=0, atol=4e-16 * (levels + 1))


def test_atrous_wavelet_on_coins(images):
    coins = images["coins"]
    w = image.atrous_wavelet(coins, 5)
    np.testing.assert_allclose(w.sum(axis=0), img_as_float(coins), rtol=0, atol=1e-14)
    assert abs(w[:5].mean()) < 1e-3  # details have (nearly) zero mean


# ----------------------------------------------------------------------------- warp_by_flow


def test_warp_by_flow_matches_skimage(images):
    img = img_as_float(images["camera"][::8, ::8])
    h, w = img.shape
    rng = np.random.default_rng(5)
    flow = rng.normal(scale=3.0, size=(2, h, w))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.array([rows + flow[0], cols + flow[1]])
    out = image.warp_by_flow(img, flow)
    # skimage's default mode="constant", cval=0 reads 0 outside: equal everywhere
    np.testing.assert_allclose(out, transform.warp(img, coords, order=1), rtol=0, atol=1e-12)
    inside = (coords[0] >= 0) & (coords[0] <= h - 1) & (coords[1] >= 0) & (coords[1] <= w - 1)
    assert 0.5 < inside.mean() < 1.0
    edge = transform.warp(img, coords, order=1, mode="edge")
    np.testing.assert_allclose(out[inside], edge[inside], rtol=0, atol=1e-12)
    assert np.abs(out - edge)[~inside].max() > 0.01  # the border rules differ outside
    rgb = images["astronaut"][::4, ::4]
    out = image.warp_by_flow(rgb, flow, channel_axis=-1)
    ref = np.stack([transform.warp(img_as_float(rgb[..., c]), coords, order=1)
                    for c in range(3)], -1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_warp_by_flow_border_rule():
    img = np.ones((4, 5))
    flow = np.zeros((2, 4, 5))
    flow[1, :, 0] = -0.25  # a quarter pixel beyond the left edge: fades to 0.75
    flow[1, :, 4] = 1.0  # a whole pixel beyond the right edge: 0
    flow[0, 0, 2] = -3.0
    out = image.warp_by_flow(img, flow)
    np.testing.assert_allclose(out[1:, 0], 0.75)
    np.testing.assert_allclose(out[:, 4], 0.0)
    assert out[0, 2] == 0.0 and out[1, 2] == 1.0


# ----------------------------------------------------------------------------- crop_regions


def _coin_boxes(coins):
    labels = measure.label(coins > 110)
    return np.array([r.bbox for r in measure.regionprops(labels) if r.area > 50])


def test_crop_regions_equals_crop_and_resize(images):
    coins = data.coins()
    boxes = _coin_boxes(coins)
    assert len(boxes) >= 10
    cf = img_as_float(coins)
    small = (8, 9)  # every box is larger: equal everywhere
    out = image.crop_regions(coins, boxes, small)
    assert out.shape == (len(boxes), *small)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        ref = transform.resize(cf[r0:r1, c0:c1], small, order=1, anti_aliasing=False)
        np.testing.assert_allclose(out[k], ref, rtol=0, atol=1e-12)
    big = (60, 70)  # enlarging: equal where both neighbours are inside the crop
    out = image.crop_regions(coins, boxes, big)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        ref = transform.resize(cf[r0:r1, c0:c1], big, order=1, mode="edge",
                               anti_aliasing=False)
        sy = (np.arange(big[0]) + 0.5) * (r1 - r0) / big[0] - 0.5
        sx = (np.arange(big[1]) + 0.5) * (c1 - c0) / big[1] - 0.5
        ok = np.ix_((sy >= 0) & (sy <= r1 - r0 - 1), (sx >= 0) & (sx <= c1 - c0 - 1))
        np.testing.assert_allclose(out[k][ok], ref[ok], rtol=0, atol=1e-12)
    # a crop touching the image corner: both replicate the edge there, equal everywhere
    out = image.crop_regions(coins, [[0, 0, 5, 6]], big)[0]
    ref = transform.resize(cf[:5, :6], big, order=1, mode="edge", anti_aliasing=False)
    top_left = np.ix_(np.arange(big[0]) < big[0] // 2, np.arange(big[1]) < big[1] // 2)
    np.testing.assert_allclose(out[top_left], ref[top_left], rtol=0, atol=1e-12)


def test_crop_regions_adaptive_sampling_averages():
    img = np.arange(64.0).reshape(8, 8)
    out = image.crop_regions(img, [[0, 0, 8, 8]], (2, 2), sampling_ratio=-1,
                             preserve_range=True)
    np.testing.assert_allclose(out[0], img.reshape(2, 4, 2, 4).mean(axis=(1, 3)))
    assert image.crop_regions(img, np.zeros((0, 4)), (3, 3)).shape == (0, 3, 3)


# ----------------------------------------------------------------------------- every backend


def _oracle_cases(rng):
    img = rng.random((9, 11, 2))
    u8 = (rng.random((7, 6)) * 255).astype(np.uint8)
    flow = rng.normal(scale=2.0, size=(2, 9, 11))
    return [
        ("pyramid_reduce", img, (), dict(channel_axis=-1)),
        ("pyramid_reduce", u8, (3,), dict(mode="constant", cval=0.2, order=0)),
        ("pyramid_expand", img, (), dict(channel_axis=-1, mode="wrap")),
        ("pyramid_expand", u8, (2.5,), dict(mode="constant", cval=0.4)),
        ("pyramid_gaussian", img, (), dict(channel_axis=-1)),
        ("pyramid_laplacian", u8, (), dict(mode="reflect")),
        ("correlate", img, (rng.standard_normal((3, 2)), (2, 3)), dict(channel_axis=-1)),
        ("correlate", u8, (rng.standard_normal((2, 2)), 4), dict(mode="constant", cval=0.5)),
        ("atrous_wavelet", img, (3,), dict(channel_axis=-1, mode="mirror")),
        ("atrous_wavelet", u8, (2,), dict(mode="constant", cval=1.0)),
        ("warp_by_flow", img, (flow,), dict(channel_axis=-1)),
        ("crop_regions", img, (np.array([[0, 0, 9, 11], [2.5, 1, 7, 4.5], [-1, 3, 4, 14]]),
                               (4, 3)), dict(channel_axis=-1)),
        ("crop_regions", u8, (np.array([[1, 1, 6, 5]]), 5), dict(sampling_ratio=-1)),
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_function_matches_oracle(backend, dtype):
    rng = np.random.default_rng(6)
    for name, img, args, kw in _oracle_cases(rng):
        if img.dtype.kind == "f":
            img = img.astype(dtype)
        before = img.copy()
        dev_args = [to_backend(a, backend) if isinstance(a, np.ndarray) and a.ndim == 3
                    else a for a in args]  # the flow lives with the image; kernels/boxes: host
        out = _run(name, img, *dev_args, backend=backend, **kw)
        ref = _run(name, img, *args, backend="reference", **kw)
        tol = 1e-4 if out[0].dtype == np.float32 else 1e-10
        assert len(out) == len(ref)
        for a, b in zip(out, ref, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, (name, a.shape, b.shape)
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)
        np.testing.assert_array_equal(img, before, err_msg=f"{name} wrote its input")


def test_non_contiguous_images(backend):
    rng = np.random.default_rng(7)
    base = rng.random((20, 30, 3))
    view = base[::2, ::-3]
    for name, args, kw in [("pyramid_reduce", (), {}), ("correlate", (np.ones((2, 2)), 2), {}),
                           ("atrous_wavelet", (2,), {})]:
        a = _run(name, view, *args, channel_axis=-1, backend=backend, **kw)
        b = _run(name, np.ascontiguousarray(view), *args, channel_axis=-1, **kw)
        _close(a, b, 1e-12)


def test_boxes_and_kernel_may_live_on_the_device(backend):
    img = np.random.default_rng(8).random((6, 7))
    boxes = np.array([[0.0, 1, 5, 6]])
    a = to_host(image.crop_regions(to_backend(img, backend), to_backend(boxes, backend), 3,
                                   backend=backend))
    np.testing.assert_allclose(a, image.crop_regions(img, boxes, 3), rtol=0, atol=1e-12)
    k = np.ones((2, 3))
    a = to_host(image.correlate(to_backend(img, backend), to_backend(k, backend), 2,
                                backend=backend))
    np.testing.assert_allclose(a, image.correlate(img, k, 2), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- errors

IMG = np.zeros((6, 7))

BAD = [
    ("pyramid_reduce", (IMG, 1.0), {}, ValueError, "downscale must be greater than 1"),
    ("pyramid_reduce", (IMG,), dict(order=3), ValueError, "order must be 0"),
    ("pyramid_reduce", (IMG,), dict(order=1.0), TypeError, "order must be an int"),
    ("pyramid_reduce", (IMG,), dict(mode="edge"), ValueError, "mode must be one of"),
    ("pyramid_reduce", (IMG,), dict(sigma=-1.0), ValueError, "sigma"),
    ("pyramid_reduce", (np.zeros((4, 5, 3)),), {}, ValueError, "channel_axis"),
    ("pyramid_reduce", (IMG,), dict(channel_axis=0), ValueError, "3-D"),
    ("pyramid_reduce", (np.zeros((4, 5, 3)),), dict(channel_axis=3), ValueError, "out of range"),
    ("pyramid_reduce", (np.zeros((4, 5, 3)),), dict(channel_axis=1.0), TypeError,
     "channel_axis"),
    ("pyramid_reduce", (np.zeros((0, 5)),), {}, ValueError, "empty"),
    ("pyramid_reduce", (IMG.astype(complex),), {}, TypeError, "dtype"),
    ("pyramid_reduce", (IMG,), dict(preserve_range=1), TypeError, "preserve_range"),
    ("pyramid_reduce", (IMG,), dict(backend="nope"), ValueError, "unknown backend"),
    ("pyramid_reduce", (IMG,), dict(backend="cupy"), TypeError, "GPU"),
    ("pyramid_expand", (IMG, 0.5), {}, ValueError, "upscale must be greater than 1"),
    ("pyramid_gaussian", (IMG, -2), {}, ValueError, "max_layer"),
    ("pyramid_laplacian", (IMG, 1.5), {}, TypeError, "max_layer must be an int"),
    ("correlate", (IMG, np.ones(3)), {}, ValueError, "kernel must be a non-empty 2-D"),
    ("correlate", (IMG, np.ones((0, 3))), {}, ValueError, "kernel"),
    ("correlate", (IMG, np.ones((2, 2)), 0), {}, ValueError, "dilation must be positive"),
    ("correlate", (IMG, np.ones((2, 2))), dict(mode="edge"), ValueError, "mode must be one of"),
    ("correlate", (IMG, np.ones((2, 2), complex)), {}, TypeError, "kernel must hold real"),
    ("atrous_wavelet", (IMG, 0), {}, ValueError, "levels must be >= 1"),
    ("atrous_wavelet", (IMG, 2.0), {}, TypeError, "levels must be an int"),
    ("warp_by_flow", (IMG, np.zeros((2, 6, 6))), {}, ValueError, "flow must have shape"),
    ("warp_by_flow", (IMG, np.zeros((2, 6, 7), int)), {}, TypeError, "flow must have a float"),
    ("crop_regions", (IMG, np.zeros((2, 5)), 3), {}, ValueError, "boxes must have shape"),
    ("crop_regions", (IMG, [[0, 0, np.nan, 2]], 3), {}, ValueError, "finite"),
    ("crop_regions", (IMG, [[2, 0, 1, 2]], 3), {}, ValueError, "min_row < max_row"),
    ("crop_regions", (IMG, [[0, 0, 2, 2]], 0), {}, ValueError, "output_shape"),
    ("crop_regions", (IMG, [[0, 0, 2, 2]], 3), dict(sampling_ratio=0), ValueError,
     "sampling_ratio"),
    ("crop_regions", (IMG, [["a", 0, 2, 2]], 3), {}, TypeError, "real numbers"),
]


@pytest.mark.parametrize("name,args,kw,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in
                                                              enumerate(BAD)])
def test_bad_input(name, args, kw, exc, match):
    with pytest.raises(exc, match=match):
        out = getattr(image, name)(*args, **kw)
        next(iter(out))  # generators check their arguments at the call, not here


# ----------------------------------------------------------------------------- examples

_EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in _EXAMPLES.glob("*.py")
                                          if not p.name.startswith(("_", "benchmark"))))
def test_example_runs(script, tmp_path):
    """Every example runs, its checks against skimage/SciPy pass, and it writes its figure."""
    proc = subprocess.run([sys.executable, str(_EXAMPLES / script), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NUMBA_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), proc.stdout
