"""fastconv.upsample and fastconv.bilinear_kernel: the oracle on every backend, PyTorch, errors.

PyTorch is an optional peer: it is imported if installed, otherwise run in a
subprocess by the Python named in ``FASTCONV_PEER_PYTHON`` (or ``/opt/peers/bin/python``
when that exists); the comparison is skipped when neither has torch.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import ORACLE_SETTINGS, assert_unchanged
from hypothesis import given
from hypothesis import strategies as st

from fastconv import reference_image
from fastconv._random_cases import relative_error, to_backend, to_host
from fastconv.conv import conv_transpose2d
from fastconv.upsample import bilinear_kernel, upsample

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# (input H, W, keyword arguments): sizes and factors that hit PyTorch's special cases
CASES = [
    (4, 5, dict(size=(8, 10))),
    (4, 5, dict(size=(3, 2))),
    (7, 3, dict(size=(7, 9))),  # one axis unchanged
    (5, 6, dict(size=1)),
    (5, 6, dict(scale_factor=2)),
    (5, 6, dict(scale_factor=3)),
    (5, 6, dict(scale_factor=1.5)),  # grid from 1/1.5, not from the rounded size
    (10, 7, dict(scale_factor=0.5)),
    (9, 9, dict(scale_factor=1 / 3)),
    (13, 17, dict(scale_factor=(1.7, 0.6))),
    (13, 17, dict(scale_factor=1.0000001)),  # same size, non-unit factor
    (4, 6, dict(scale_factor=4 / 3)),
    (6, 4, dict(scale_factor=2.3, recompute_scale_factor=True)),
    (6, 4, dict(scale_factor=2.3)),
    (1, 6, dict(size=(4, 13))),
]
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]


def _all_cases():
    for i, (h, w, kw) in enumerate(CASES):
        for mode, ac in MODES:
            yield i, h, w, dict(kw, mode=mode, align_corners=ac)


def _input(h, w, dtype, seed=0, n=2, c=3):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)


# ----------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("case", list(_all_cases()), ids=lambda c: f"{c[0]}-{c[3]['mode']}-"
                         f"{c[3]['align_corners']}")
def test_matches_oracle(backend, dtype, case):
    _, h, w, kw = case
    x = _input(h, w, dtype)
    before = {"x": x.copy()}
    out = to_host(upsample(to_backend(x, backend), **kw, backend=backend))
    ref = to_host(upsample(x, **kw, backend="reference"))
    assert out.dtype == dtype and ref.dtype == dtype
    assert out.shape == ref.shape
    assert relative_error(out, ref.astype(np.float64)) <= TOL[dtype], kw
    assert_unchanged(before, {"x": x})


@ORACLE_SETTINGS
@given(data=st.data())
def test_random_cases_match_oracle(dtype, data):
    h, w = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    mode, ac = data.draw(st.sampled_from(MODES))
    if data.draw(st.booleans()):
        kw = dict(size=(data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))))
    else:
        f = st.floats(0.3, 4.0, allow_nan=False)
        kw = dict(scale_factor=(data.draw(f), data.draw(f)))
        if int(h * kw["scale_factor"][0]) < 1 or int(w * kw["scale_factor"][1]) < 1:
            return
        kw["recompute_scale_factor"] = data.draw(st.sampled_from([None, True]))
    x = _input(h, w, dtype, seed=data.draw(st.integers(0, 1000)), n=1, c=2)
    out = upsample(x, **kw, mode=mode, align_corners=ac)
    ref = reference_image.upsample(x, out.shape[2:], kw.get("scale_factor")
                                   if not kw.get("recompute_scale_factor") else None,
                                   mode, bool(ac))
    assert ref.shape == out.shape
    assert relative_error(out, ref) <= TOL[dtype]


def test_empty_batch_and_channels(backend):
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5)]:
        x = np.zeros(shape, np.float32)
        for mode, ac in MODES:
            out = upsample(to_backend(x, backend), size=(6, 7), mode=mode, align_corners=ac,
                           backend=backend)
            assert to_host(out).shape == shape[:2] + (6, 7)


def test_non_contiguous_input(backend):
    base = _input(9, 12, np.float64, n=2, c=4)
    view = base[:, ::2, ::-1, 1::2]
    for mode, ac in MODES:
        kw = dict(size=(11, 4), mode=mode, align_corners=ac, backend=backend)
        if backend == "cpu":
            a = upsample(view, **kw)
        else:
            a = to_host(upsample(to_backend(view, backend), **kw))
        b = upsample(np.ascontiguousarray(view), **kw) if backend == "cpu" else \
            to_host(upsample(to_backend(np.ascontiguousarray(view), backend), **kw))
        np.testing.assert_array_equal(a, b)


def test_nan_and_inf_propagate_like_the_oracle(backend):
    x = _input(5, 6, np.float64)
    x[0, 0, 2, 3] = np.nan
    x[1, 2, 4, 5] = np.inf
    for size in [(5, 6), (9, 11), (3, 4)]:
        for mode, ac in MODES:
            out = to_host(upsample(to_backend(x, backend), size=size, mode=mode,
                                   align_corners=ac, backend=backend))
            ref = reference_image.upsample(x, size, None, mode, bool(ac))
            np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
            assert relative_error(out, ref) <= 1e-12


def test_known_values():
    x = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    np.testing.assert_array_equal(upsample(x, scale_factor=2)[0, 0],
                                  np.kron(x[0, 0], np.ones((2, 2))))
    out = upsample(x, size=3, mode="bilinear", align_corners=True)[0, 0]
    np.testing.assert_allclose(out, [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
    out = upsample(x, scale_factor=2, mode="bilinear")[0, 0, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1])  # edge clamped, 1/4 - 3/4 inside
    # nearest with a non-integer factor follows 1/scale_factor in float32, as PyTorch:
    # 4 -> 6 with factor 1.5 reads floor(o * float32(2/3)): 0 0 1 2 2 3
    row = np.arange(4.0).reshape(1, 1, 1, 4)
    np.testing.assert_array_equal(upsample(row, scale_factor=(1, 1.5))[0, 0, 0],
                                  [0, 0, 1, 2, 2, 3])


def test_bilinear_equals_skimage_resize_without_antialiasing():
    """With ``size``, bilinear upsample = skimage resize(order=1, mode="edge") per plane."""
    transform = pytest.importorskip("skimage.transform")
    x = _input(9, 13, np.float64, n=1, c=2)
    for size in [(20, 31), (4, 5), (9, 40), (17, 6)]:
        out = upsample(x, size=size, mode="bilinear")
        ref = np.stack([transform.resize(p, size, order=1, mode="edge", anti_aliasing=False)
                        for p in x[0]])
        np.testing.assert_allclose(out[0], ref, rtol=0, atol=1e-12)
    # nearest with an integer factor = resize(order=0); PyTorch's legacy rule differs otherwise
    out = upsample(x, scale_factor=3)
    ref = np.stack([transform.resize(p, (27, 39), order=0, anti_aliasing=False) for p in x[0]])
    np.testing.assert_array_equal(out[0], ref)


# ----------------------------------------------------------------------------- PyTorch


_PEER_SCRIPT = r"""
import json, sys
import numpy as np, torch
import torch.nn.functional as F
cases = json.loads(open(sys.argv[1]).read())
data = np.load(sys.argv[2])
out = {}
for i, kw in enumerate(cases):
    for k in ("size", "scale_factor"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    out[f"y{i}"] = F.interpolate(torch.from_numpy(data[f"x{i}"]), **kw).numpy()
np.savez(sys.argv[3], **out)
"""


def _peer_python():
    exe = os.environ.get("FASTCONV_PEER_PYTHON") or (
        "/opt/peers/bin/python" if os.path.exists("/opt/peers/bin/python") else None)
    return exe


@pytest.fixture(scope="module")
def torch_results(tmp_path_factory):
    """PyTorch's interpolate of every (case, dtype): ``{(i, mode, ac, dtype): (x, y)}``."""
    cases, inputs = [], {}
    for i, h, w, kw in _all_cases():
        for dt in ("float32", "float64"):
            inputs[f"x{len(cases)}"] = _input(h, w, dt, seed=i)
            cases.append(kw)
    try:
        import torch
        import torch.nn.functional as F

        outs = {f"y{j}": F.interpolate(torch.from_numpy(inputs[f"x{j}"]), **kw).numpy()
                for j, kw in enumerate(cases)}
    except ImportError:
        exe = _peer_python()
        if exe is None:
            pytest.skip("PyTorch not installed (set FASTCONV_PEER_PYTHON to a Python with torch)")
        d = tmp_path_factory.mktemp("torch")
        (d / "cases.json").write_text(json.dumps(cases))
        (d / "peer.py").write_text(_PEER_SCRIPT)
        np.savez(d / "x.npz", **inputs)
        run = subprocess.run([exe, str(d / "peer.py"), str(d / "cases.json"), str(d / "x.npz"),
                              str(d / "y.npz")], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.skip(f"the peer Python could not run torch: {run.stderr[-300:]}")
        outs = dict(np.load(d / "y.npz"))
    return [(cases[j], inputs[f"x{j}"], outs[f"y{j}"]) for j in range(len(cases))]


@pytest.mark.parametrize("backend_name", ["cpu", "reference"])
def test_matches_pytorch(torch_results, backend_name):
    worst = {}
    for kw, x, y in torch_results:
        out = upsample(x, **kw, backend=backend_name)
        assert out.shape == y.shape, (kw, out.shape, y.shape)
        assert out.dtype == y.dtype
        if kw["mode"] == "nearest":  # indices agree bit for bit, whatever the dtype
            np.testing.assert_array_equal(out, y, err_msg=str(kw))
        err = float(np.abs(out.astype(np.float64) - y).max())
        key = str(x.dtype)
        worst[key] = max(worst.get(key, 0.0), err)
    # float32: PyTorch computes coordinates in float32 (the oracle in float64)
    assert worst["float64"] <= 1e-12, worst
    assert worst["float32"] <= (2e-6 if backend_name == "cpu" else 2e-5), worst


# ----------------------------------------------------------------------------- bilinear_kernel


def test_bilinear_kernel_values():
    k = bilinear_kernel(1, 2)[0, 0]
    t = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_array_equal(k, np.outer(t, t).astype(np.float32))
    k3 = bilinear_kernel(1, 3, dtype=np.float64)[0, 0]  # odd factor: 5 taps, centre 2
    t3 = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(k3, np.outer(t3, t3))
    w = bilinear_kernel(3, 4)
    assert w.shape == (3, 3, 8, 8) and w.dtype == np.float32
    assert np.count_nonzero(w.sum(axis=(2, 3))) == 3  # only the diagonal
    np.testing.assert_array_equal(w[1, 1], bilinear_kernel(3, 4, depthwise=True)[1, 0])
    assert bilinear_kernel(2, 1).shape == (2, 2, 1, 1)  # factor 1: the identity


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("depthwise", [False, True])
def test_bilinear_kernel_vs_upsample(factor, depthwise):
    """conv_transpose2d with the FCN kernel = upsample(bilinear) except a border band.

    Exactly: conv_t(x) == upsample(x) * conv_t(ones); the band is factor // 2 wide.
    """
    rng = np.random.default_rng(factor)
    c = 3
    x = rng.random((2, c, 6, 7))
    k = bilinear_kernel(c, factor, depthwise=depthwise, dtype=np.float64)
    kw = dict(stride=factor, padding=factor // 2, groups=c if depthwise else 1)
    y = conv_transpose2d(x, k, **kw)
    up = upsample(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == up.shape == (2, c, 6 * factor, 7 * factor)
    ones = conv_transpose2d(np.ones_like(x), k, **kw)
    np.testing.assert_allclose(y, up * ones, rtol=1e-12, atol=1e-14)
    band = factor // 2
    inner = (slice(None), slice(None), slice(band, y.shape[2] - band),
             slice(band, y.shape[3] - band))
    np.testing.assert_allclose(y[inner], up[inner], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ones[inner], 1.0, rtol=1e-12)
    if band:  # the border darkens: weights sum to less than 1 there
        assert (ones[:, :, :band] < 1 - 1e-9).all() and (ones[:, :, -band:] < 1 - 1e-9).all()
        assert (ones[:, :, :, :band] < 1 - 1e-9).all()


def test_bilinear_kernel_like(backend):
    like = to_backend(np.zeros((1, 2, 3, 3), np.float64), backend)
    w = bilinear_kernel(2, 2, like=like)
    assert type(w).__module__.split(".")[0] == type(like).__module__.split(".")[0]
    w = to_host(w)
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, bilinear_kernel(2, 2, dtype=np.float64))


# ----------------------------------------------------------------------------- errors

X = np.zeros((1, 1, 4, 4), np.float32)

BAD = [
    (dict(input=np.zeros((4, 4), np.float32), size=2), ValueError, "4-D"),
    (dict(input=X), ValueError, "either size or scale_factor"),
    (dict(input=X, size=2, scale_factor=2), ValueError, "only one of size or scale_factor"),
    (dict(input=X, size=2, mode="bicubic"), ValueError, "mode must be one of"),
    (dict(input=X, size=2, align_corners=True), ValueError, "align_corners"),
    (dict(input=X, size=2, mode="bilinear", align_corners=1), TypeError, "align_corners"),
    (dict(input=X, size=0), ValueError, "size must be positive"),
    (dict(input=X, size=(2, 2, 2)), ValueError, "size must be an int or a pair"),
    (dict(input=X, size=2.5), TypeError, "size must be an int"),
    (dict(input=X, scale_factor=-1.0), ValueError, "scale_factor must be finite and positive"),
    (dict(input=X, scale_factor=float("nan")), ValueError, "scale_factor"),
    (dict(input=X, scale_factor="2"), TypeError, "scale_factor must be a number"),
    (dict(input=X, scale_factor=0.1), ValueError, "output size is empty"),
    (dict(input=X, size=2, recompute_scale_factor=True), ValueError, "recompute_scale_factor"),
    (dict(input=X.astype(np.int32), size=2), TypeError, "dtype"),
    (dict(input=X, size=2, backend="gpu"), ValueError, "unknown backend"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        upsample(**kwargs)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(channels=0, factor=2), ValueError, "channels"),
    (dict(channels=2, factor=0), ValueError, "factor"),
    (dict(channels=2, factor=1.5), TypeError, "factor"),
    (dict(channels=2, factor=2, dtype=np.int32), TypeError, "dtype"),
    (dict(channels=2, factor=2, depthwise="yes"), TypeError, "depthwise"),
])
def test_bilinear_kernel_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        bilinear_kernel(**kwargs)
