"""Every CUDA C instantiation of the cupy backend, run by the CPU emulator against the oracle.

The random cases of the main suite (run here with ``backend="cupy_emulated"``)
use few channels, so they never reach the implicit-GEMM kernel or the wide
channel blocks.  The cases below are chosen per kernel path (see the launchers'
``_conv2d_config`` / ``_roi_config``) and the last test checks that, between
them, every name expression the launchers may use has run -- in float16,
float32 and float64.
"""

import numpy as np
import pytest
from conftest import N_EXAMPLES, ORACLE_SETTINGS, bench_script, check_random_case
from cupy_emu import emulator
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _random_cases, image, reference
from fastconv.backends.cupy import _module
from fastconv.backends.cupy import conv as cupy_conv
from fastconv.backends.cupy import deform as cupy_deform
from fastconv.backends.cupy import roi as cupy_roi

BACKEND = emulator.NAME
DTYPES = ["float16", "float32", "float64"]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv(n, c_in, c_out, k, groups=1, hw=(9, 11), **kw):
    """A conv2d case: ``k`` is (kH, kW), ``hw`` the image size."""
    def make(rng, dtype):
        x = _rand(rng, (n, c_in, *hw), dtype)
        w = _rand(rng, (c_out, c_in // groups, *k), dtype)
        b = _rand(rng, (c_out,), dtype)
        return "conv2d", dict(input=x, weight=w, bias=b), dict(groups=groups, **kw)
    return make


def _convt(c_in, c_out_per_group, k, groups=1, **kw):
    def make(rng, dtype):
        x = _rand(rng, (2, c_in, 5, 6), dtype)
        w = _rand(rng, (c_in, c_out_per_group, *k), dtype)
        b = _rand(rng, (c_out_per_group * groups,), dtype)
        return "conv_transpose2d", dict(input=x, weight=w, bias=b), dict(groups=groups, **kw)
    return make


def _deform(c_in, c_out, groups=1):
    def make(rng, dtype):
        x = _rand(rng, (2, c_in, 7, 8), dtype)
        offset = (rng.standard_normal((2, 18, 7, 8)) * 1.5).astype(dtype)
        mask = rng.uniform(0, 1, (2, 9, 7, 8)).astype(dtype)
        w = _rand(rng, (c_out, c_in // groups, 3, 3), dtype)
        arrays = dict(input=x, offset=offset, weight=w, bias=None, mask=mask)
        return "deform_conv2d", arrays, dict(padding=1)
    return make


def _deform_general(c_in, c_out, k, groups=1, offset_groups=1, mask=True, bias=True,
                    stride=(1, 1), padding=(1, 1), dilation=(1, 1)):
    """A deform_conv2d case of any shape: 2 images of 9x10, offsets of scale 2 (some
    samples fall outside the image and between its pixels)."""
    def make(rng, dtype):
        h, w = 9, 10
        ho = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
        taps = offset_groups * k[0] * k[1]
        arrays = dict(
            input=_rand(rng, (2, c_in, h, w), dtype),
            offset=(rng.standard_normal((2, 2 * taps, ho, wo)) * 2).astype(dtype),
            weight=_rand(rng, (c_out, c_in // groups, *k), dtype),
            bias=_rand(rng, (c_out,), dtype) if bias else None,
            mask=rng.uniform(0, 1, (2, taps, ho, wo)).astype(dtype) if mask else None)
        return "deform_conv2d", arrays, dict(stride=stride, padding=padding, dilation=dilation)
    return make


#: deform_conv2d_gemm (DEFORM_FUSED): (label, extra settings, case); the fused kernel
#: applies where its table fits (float/half: 3x3 with one offset group per conv group;
#: double: up to 3 taps), else the two-stage path runs
DEFORM_FUSED_CASES = [
    ("3x3 DCNv2, bias, tiles across images", [],
     _deform_general(4, 36, (3, 3))),
    ("2x2 DCNv1, 2 groups x 4 offset groups (2 per group), strided, dilated", [],
     _deform_general(8, 70, (2, 2), groups=2, offset_groups=4, mask=False, bias=False,
                     stride=(2, 1), dilation=(1, 2))),
    ("1x2, 3 groups x 2 offset groups (straddling)", [],
     _deform_general(6, 96, (1, 2), groups=3, offset_groups=2, padding=(0, 1))),
    ("1x3 split 3 ways", [(cupy_conv, "SPLIT_K", 3)],
     _deform_general(5, 40, (1, 3), padding=(0, 1))),
    ("1x1, 3 offset groups, strided", [],
     _deform_general(6, 33, (1, 1), offset_groups=3, stride=(2, 2), padding=(0, 0))),
]


def _roi(op, channels, **kw):
    def make(rng, dtype):
        x = _rand(rng, (2, channels, 12, 10), dtype)
        xy = rng.uniform(-4, 40, (9, 2))
        wh = rng.uniform(0, 30, (9, 2))
        index = rng.integers(0, 2, (9, 1)).astype(np.float64)
        index[[1, 4, 7], 0] = [2, -1, np.nan]  # no image (check_boxes=False): zeros
        boxes = np.concatenate([index, xy, xy + wh], axis=1).astype(dtype)
        return op, dict(input=x, boxes=boxes), dict(output_size=(3, 4), spatial_scale=0.25, **kw)
    return make


#: the RoI cases hold boxes whose batch index names no image: let them through
_UNCHECKED = {"roi_align": dict(check_boxes=False), "roi_pool": dict(check_boxes=False)}

# (label, case maker): each hits the kernel named in the label
PATHS = [
    ("conv2d_gemm 3x3, 2 tiles of output channels", _conv(2, 6, 70, (3, 3), groups=2, padding=1)),
    ("conv2d_gemm 1x1, strided", _conv(1, 5, 40, (1, 1), stride=2)),
    ("conv2d_gemm 2x3 dilated (any size)", _conv(2, 4, 33, (2, 3), dilation=(2, 1), padding=1)),
    ("conv2d_direct KB=1", _conv(2, 4, 2, (3, 3), groups=2, padding=1)),
    ("conv2d_direct KB=2", _conv(1, 3, 2, (2, 2), stride=(1, 2))),
    ("conv2d_direct KB=4", _conv(2, 6, 6, (3, 2), groups=2, dilation=2)),
    ("conv2d_direct KB=8", _conv(1, 4, 7, (3, 3), padding="same")),
    ("conv2d_direct KB=16 (two chunks)", _conv(1, 6, 40, (1, 3), groups=2, padding=(0, 1))),
    ("conv2d_depthwise_tiled 3x3 (x2 multiplier)", _conv(2, 3, 6, (3, 3), groups=3, padding=1)),
    ("conv2d_depthwise_tiled 5x5 strided", _conv(1, 4, 4, (5, 5), groups=4, padding=2, stride=2)),
    ("conv2d_depthwise_tiled 2x4 (any size)", _conv(1, 2, 2, (2, 4), groups=2, dilation=(1, 2))),
    ("conv2d_depthwise_direct (tile too large)",
     _conv(1, 2, 2, (3, 3), groups=2, padding=60, dilation=60)),
    ("conv_transpose2d_direct KB=1", _convt(4, 1, (3, 3), groups=2, stride=2, padding=1)),
    ("conv_transpose2d_direct KB=2", _convt(3, 2, (4, 4), stride=2, padding=1)),
    ("conv_transpose2d_direct KB=4", _convt(2, 3, (3, 2), stride=(3, 2), dilation=(2, 3))),
    ("conv_transpose2d_direct KB=8", _convt(2, 6, (2, 2), stride=2, output_padding=1)),
    ("conv_transpose2d_direct KB=16", _convt(4, 12, (16, 16), groups=2, stride=8, padding=4)),
    ("deform_im2col + conv2d_gemm 1x1", _deform(4, 36)),
    ("deform_im2col + conv2d_direct 1x1", _deform(4, 6, groups=2)),
    ("roi_align CB=1", _roi("roi_align", 3, sampling_ratio=2, aligned=True)),
    ("roi_align CB=4", _roi("roi_align", 5, sampling_ratio=-1, aligned=False)),
    ("roi_align CB=8", _roi("roi_align", 9, sampling_ratio=1, aligned=True)),
    ("roi_pool CB=1", _roi("roi_pool", 2)),
    ("roi_pool CB=4", _roi("roi_pool", 4)),
    ("roi_pool CB=8", _roi("roi_pool", 11)),
]


def _image_paths(dtype):
    """The resample kernels: nearest (gather), bilinear (lerp), separable filter (h, w)."""
    rng = np.random.default_rng(3)
    x = _rand(rng, (2, 3, 7, 9), dtype)
    img = rng.random((12, 10, 3)).astype(dtype)
    yield "upsample nearest", lambda b: fastconv.upsample(x, scale_factor=2.5, backend=b)
    yield "upsample bilinear", lambda b: fastconv.upsample(
        x, size=(11, 5), mode="bilinear", align_corners=False, backend=b)
    yield "pyramid_reduce", lambda b: image.pyramid_reduce(img, channel_axis=-1, backend=b)
    yield "correlate dilated", lambda b: image.correlate(
        img, np.ones((2, 3)), 3, mode="wrap", channel_axis=-1, backend=b)


def _forced_paths():
    """(label, [(module, setting, value)], case maker) for the paths that are off by
    default, each forced by its settings: split-K (conv_sum_splits; automatic on a GPU
    with few tiles), the phase GEMM for conv_transpose2d (FCN-like: kernel 2x stride), the
    RoI kernels with boxes on grid y (7 boxes over a grid y of 3: it strides), the fused
    deformable GEMM and the vector register tiles."""
    roi_box_grid = [
        (f"{op} CB={cb} boxes on grid y", [(cupy_roi, "ROI_BOX_GRID", True),
                                           (cupy_roi, "ROI_CB", cb)], _roi(op, c, **kw))
        for op, kw in [("roi_align", dict(sampling_ratio=-1, aligned=False)), ("roi_pool", {})]
        for cb, c in [(1, 3), (4, 6), (8, 13)]
    ]
    deform_fused = [(f"deform_conv2d_gemm {label}", [(cupy_deform, "DEFORM_FUSED", True), *extra],
                     make) for label, extra, make in DEFORM_FUSED_CASES]
    # gemm.cuh's vector register tiles (GEMM_VEC): 64 rows, 128 rows (64 in double), 32 rows
    # (phase GEMM); Ho*Wo % 4 == 0 takes the vector stores, other sizes the scalar ones
    vec = (cupy_conv, "GEMM_VEC", True)
    split3 = (cupy_conv, "SPLIT_K", 3)
    phase = (cupy_conv, "TRANSPOSED_GEMM", True)
    # (16 or 32 input channels per group: conv2d_gemm's tap-major loads; other counts: the
    # channel-major ones)
    vector_tiles = [
        ("conv2d_gemm vector tiles, 64 rows, 3x3, 9x11 (scalar stores)", [vec],
         _conv(2, 6, 40, (3, 3), padding=1)),
        ("conv2d_gemm vector tiles, 64 rows, 3x3, tap-major", [vec],
         _conv(2, 16, 40, (3, 3), padding=1)),
        ("conv2d_gemm vector tiles, 128 rows, 3x3, 8x8 (vector stores), split 3 ways",
         [vec, split3], _conv(2, 5, 130, (3, 3), padding=1, hw=(8, 8))),
        ("conv2d_gemm vector tiles, 128 rows, 3x3 dilated, tap-major, split 3 ways",
         [vec, split3], _conv(1, 32, 130, (3, 3), padding=2, dilation=2, hw=(8, 8))),
        ("conv2d_gemm vector tiles, 128 rows, 2 groups, 1x1 strided", [vec],
         _conv(1, 4, 140, (1, 1), groups=2, stride=2)),
        ("conv2d_gemm vector tiles, 128 rows, 2 groups, 1x1 strided, tap-major", [vec],
         _conv(1, 32, 140, (1, 1), groups=2, stride=2)),
        ("conv2d_gemm vector tiles, 64 rows, 2x2 (any size), 8x10 (vector stores)", [vec],
         _conv(2, 4, 33, (2, 2))),
        ("conv2d_gemm vector tiles, 64 rows, 3x2 strided (any size), tap-major", [vec],
         _conv(2, 16, 33, (3, 2), stride=(2, 1), padding=(1, 0))),
        ("conv2d_gemm vector tiles, 128 rows, 2x3 dilated", [vec],
         _conv(1, 3, 70, (2, 3), dilation=(2, 1), padding=1)),
        ("deform_im2col + conv2d_gemm 1x1 vector tiles", [vec], _deform(4, 36)),
        ("conv_transpose2d_gemm vector tiles, 32 rows (FCN-like)", [phase, vec],
         _convt(4, 21, (16, 16), stride=8, padding=4)),
        ("conv_transpose2d_gemm vector tiles, 64 rows, split", [phase, vec, split3],
         _convt(6, 40, (5, 5), stride=3, padding=1)),
        ("conv_transpose2d_gemm vector tiles, 128 rows", [phase, vec],
         _convt(6, 70, (6, 6), stride=3, padding=1)),
        # phases of 1, 2 or 4 taps (R = 16, 32, 64), split: a slice past a short phase
        ("conv_transpose2d_gemm vector tiles, 64 rows, tap-major, split", [phase, vec, split3],
         _convt(16, 40, (5, 5), stride=3, padding=1)),
        ("conv_transpose2d_gemm vector tiles, 128 rows, tap-major, dilated", [phase, vec],
         _convt(32, 70, (3, 3), stride=2, padding=2, dilation=2)),
        *[(f"deform_conv2d_gemm vector tiles, {label}",
           [(cupy_deform, "DEFORM_FUSED", True), vec, *extra], make)
          for label, extra, make in DEFORM_FUSED_CASES[::3]],
    ]
    return [
        ("conv2d_gemm split 3 ways", [(cupy_conv, "SPLIT_K", 3)],
         _conv(2, 20, 70, (3, 3), padding=1)),
        ("conv2d_depthwise_direct by choice", [(cupy_conv, "DEPTHWISE_TILED", False)],
         _conv(2, 3, 6, (3, 3), groups=3, padding=1)),
        # a 3x3 tile of 34x34 = 1156 elements: 2 passes of 4 x 256 loads, the last partial
        ("conv2d_depthwise_tiled 4 loads in flight", [(cupy_conv, "DEPTHWISE_LOADS", 4)],
         _conv(2, 3, 6, (3, 3), groups=3, padding=1)),
        ("conv2d_depthwise_tiled 4 loads in flight, 5x5 strided",
         [(cupy_conv, "DEPTHWISE_LOADS", 4)],
         _conv(1, 4, 4, (5, 5), groups=4, padding=2, stride=2)),
        ("conv2d_depthwise_tiled 4 loads in flight, any size, strided",
         [(cupy_conv, "DEPTHWISE_LOADS", 4)],
         _conv(1, 2, 4, (2, 4), groups=2, stride=2, dilation=(1, 2))),
        ("conv_transpose2d_gemm", [(cupy_conv, "TRANSPOSED_GEMM", True)],
         _convt(6, 70, (6, 6), stride=3, padding=1)),
        ("conv_transpose2d_gemm 32-row tiles (FCN-like: 16x16 taps at stride 8)",
         [(cupy_conv, "TRANSPOSED_GEMM", True)],
         _convt(4, 21, (16, 16), stride=8, padding=4)),
        # phases of 1 or 2 taps per axis (R = 6, 12, 24): the second slice is empty for some
        ("conv_transpose2d_gemm split", [(cupy_conv, "TRANSPOSED_GEMM", True),
                                         (cupy_conv, "SPLIT_K", 3)],
         _convt(6, 70, (5, 5), stride=3, padding=1)),
        *roi_box_grid,
        *deform_fused,
        *vector_tiles,
    ]


def _run_with(settings_, op, arrays, params):
    """Call ``op`` on the emulated backend with the module ``settings_`` set for the call."""
    old = [(m, name, getattr(m, name)) for m, name, _ in settings_]
    for m, name, value in settings_:
        setattr(m, name, value)
    try:
        return getattr(fastconv, op)(**arrays, **params, **_UNCHECKED.get(op, {}),
                                     backend=BACKEND)
    finally:
        for m, name, value in old:
            setattr(m, name, value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_instantiation_matches_oracle(dtype):
    dtype = np.dtype(dtype)
    tol = _random_cases.TOLERANCE[dtype]
    rng = np.random.default_rng(0)
    before = dict(emulator.LAUNCHED)
    for label, make in PATHS:
        op, arrays, params = make(rng, dtype)
        out = _run_with([], op, arrays, params)
        ref = getattr(reference, op)(**arrays, **params)
        assert out.dtype == dtype and out.shape == ref.shape, label
        err = _random_cases.relative_error(out, ref)
        assert err <= tol, f"{label} ({dtype}): relative error {err:.3g} > {tol:g}"
    # with the default settings no optional kernel runs (they are compiled separately)
    by_default = {name for name, count in emulator.LAUNCHED.items()
                  if count > before.get(name, 0)}
    assert not [n for n in by_default if _module.optional(n)]
    # the paths that are off by default, forced
    for label, settings_, make in _forced_paths():
        op, arrays, params = make(rng, dtype)
        out = _run_with(settings_, op, arrays, params)
        err = _random_cases.relative_error(out, getattr(reference, op)(**arrays, **params))
        assert err <= tol, f"{label} ({dtype}): relative error {err:.3g} > {tol:g}"
    # the GPU box check of check_boxes=True (the emulated backend's boxes live on the
    # host, so the public call takes the host path: run the kernel directly)
    boxes, n_bad = _random_cases.boxes_with_every_defect(rng, dtype, batch=3)
    assert cupy_roi.count_bad_boxes(boxes, 3) == n_bad > 0
    assert cupy_roi.count_bad_boxes(boxes[:0], 3) == 0
    if dtype != np.float16:  # the image functions compute in float32/float64
        for label, run in _image_paths(dtype):
            out, ref = run(BACKEND), run("reference")
            outs, refs = (out, ref) if isinstance(out, list) else ([out], [ref])
            for a, b in zip(outs, refs, strict=True):
                err = _random_cases.relative_error(a, b.astype(np.float64))
                assert err <= tol, f"{label} ({dtype}): relative error {err:.3g} > {tol:g}"

    ran = {name for name, count in emulator.LAUNCHED.items() if count > before.get(name, 0)}
    wanted = {name for name in emulator.all_names() if f"<{_CTYPE[dtype]}" in name}
    if dtype == np.float16:  # the image kernels are never asked for float16 data
        wanted = {name for name in wanted if "resample_" not in name}
    assert not wanted - ran, f"never launched: {sorted(wanted - ran)}"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_weighted_path_propagates_infinite_weights_as_the_oracle(dtype):
    """NaN/Inf propagate as in the oracle (DESIGN.md), also from the weights: a padding
    zero (conv2d) or an out-of-image sample (deform_conv2d) under an infinite weight gives
    NaN, a real input under it gives +-inf, and conv_transpose2d multiplies only real
    inputs (no zero is inserted).  A kernel that skips a padding tap instead of
    multiplying its zero gives a finite value where the oracle has NaN."""
    dtype = np.dtype(dtype)
    tol = _random_cases.TOLERANCE[dtype]
    rng = np.random.default_rng(1)
    cases = [(label, [], make) for label, make in PATHS] + _forced_paths()
    checked, wrong = 0, []
    for label, settings_, make in cases:
        op, arrays, params = make(rng, dtype)
        if "weight" not in arrays:
            continue
        arrays["weight"] = _random_cases.with_infinite_taps(arrays["weight"])
        out = _run_with(settings_, op, arrays, params)
        ref = getattr(reference, op)(**arrays, **params)
        assert not np.isfinite(ref).all(), label
        if _random_cases.relative_error(out, ref) > tol:
            wrong.append(f"{label}: NaN at {np.isnan(np.asarray(out)).sum()} outputs, "
                         f"the oracle at {np.isnan(ref).sum()}")
        checked += 1
    assert not wrong, f"{dtype}:\n" + "\n".join(wrong)
    assert checked == 49, checked  # every case with a weight (the RoI ones have none)


_CTYPE = {np.dtype("float16"): "__half", np.dtype("float32"): "float",
          np.dtype("float64"): "double"}


@pytest.mark.parametrize("op", _random_cases.OPS)
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_float16_random_cases(op, data):
    """The main suite's random cases in float16 (the cupy backend's third dtype)."""
    check_random_case(op, BACKEND, np.dtype(np.float16), data)


@pytest.fixture
def gemm_everywhere():
    """Force the implicit-GEMM kernel for every conv2d with more than one channel per group."""
    old = cupy_conv.GEMM_MIN_KG
    cupy_conv.GEMM_MIN_KG = 1
    cupy_conv._conv2d_config.cache_clear()
    yield
    cupy_conv.GEMM_MIN_KG = old
    cupy_conv._conv2d_config.cache_clear()


@pytest.mark.parametrize("op", ["conv2d", "deform_conv2d"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_random_cases_through_the_gemm_kernel(gemm_everywhere, op, dtype, data):
    """The random configurations (odd sizes, strides, groups) on the implicit-GEMM path."""
    check_random_case(op, BACKEND, np.dtype(dtype), data)


@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("op", ["conv2d", "deform_conv2d"])
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_random_cases_through_split_k(gemm_everywhere, monkeypatch, splits, op, data):
    """The same through split-K: partial sums of reduction slices, then conv_sum_splits
    (slices of 16 rows, so most small cases get fewer slices than asked for, some one)."""
    monkeypatch.setattr(cupy_conv, "SPLIT_K", splits)
    check_random_case(op, BACKEND, np.dtype("float32"), data)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_random_transposed_cases_through_the_phase_gemm(monkeypatch, splits, dtype, data):
    """The random conv_transpose2d configurations (strides, dilations, groups, output
    padding, phases with no taps) through conv_transpose2d_gemm, unsplit and split-K."""
    monkeypatch.setattr(cupy_conv, "TRANSPOSED_GEMM", True)
    monkeypatch.setattr(cupy_conv, "SPLIT_K", splits)
    check_random_case("conv_transpose2d", BACKEND, np.dtype(dtype), data)


@pytest.mark.parametrize("op", ["conv2d", "deform_conv2d", "conv_transpose2d"])
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_random_cases_through_the_vector_tiles(gemm_everywhere, monkeypatch, request, op,
                                               data):
    """The random configurations through the implicit GEMMs with gemm.cuh's vector register
    tiles (GEMM_VEC; 32, 64 or 128 rows by channel count), split 2 ways: conv2d_gemm,
    the fused deform_conv2d_gemm where its table fits, conv_transpose2d_gemm."""
    cupy_deform.fused_config.cache_clear()  # it reads GEMM_MIN_KG, not in its cache key
    request.addfinalizer(cupy_deform.fused_config.cache_clear)
    monkeypatch.setattr(cupy_conv, "GEMM_VEC", True)
    monkeypatch.setattr(cupy_conv, "SPLIT_K", 2)
    monkeypatch.setattr(cupy_conv, "TRANSPOSED_GEMM", True)
    monkeypatch.setattr(cupy_deform, "DEFORM_FUSED", True)
    check_random_case(op, BACKEND, np.dtype("float32"), data)


@pytest.mark.parametrize(("kg", "dchar", "vec", "narrow", "expected"), [
    (64, "f", False, False, (64, False)),   # the default tile, whatever the channel count
    (256, "f", False, False, (64, False)),
    (21, "f", False, True, (32, False)),    # phase GEMM, narrow groups
    (21, "f", True, True, (32, True)),
    (40, "f", True, False, (64, True)),
    (64, "e", True, False, (64, True)),
    (65, "f", True, False, (128, True)),
    (256, "e", True, False, (128, True)),
    (256, "d", True, False, (64, True)),    # double: no 128-row tiles
])
def test_gemm_tile_choice(kg, dchar, vec, narrow, expected):
    assert cupy_conv.gemm_tile(kg, dchar, vec, narrow) == expected


@pytest.mark.parametrize(("tiles", "r", "sms", "expected"), [
    (128, 2304, 132, (2, 1152)),   # dilated_aspp on an H100: 256 blocks in one wave
    (128, 576, 132, (2, 288)),     # dilated_small
    (64, 2304, 132, (4, 576)),
    (200, 2304, 132, (1, 2304)),   # enough tiles already
    (128, 200, 132, (1, 200)),     # too short a reduction to split
    (3, 100, 0, (1, 100)),         # no SM count known (the emulator): never automatic
])
def test_split_k_choice(tiles, r, sms, expected):
    splits, r_slice = cupy_conv.split_k(tiles, r, sms)
    assert (splits, r_slice) == expected
    assert r_slice % 16 == 0 or splits == 1
    assert (splits - 1) * r_slice < r <= splits * r_slice


def test_split_k_for_128_row_tiles_counts_one_block_per_sm():
    # dilated_aspp with 128 x 128 tiles: 64 tiles, one resident block per SM (168+
    # registers), so 2 slices make 128 blocks for 132 SMs (64-row tiles' rule: 4 slices)
    assert cupy_conv.split_k(64, 2304, 132, bm=128) == (2, 1152)
    assert cupy_conv.split_k(64, 2304, 132) == (4, 576)


# ----------------------------------------------------------------------------- the emulator


def test_python_scalars_are_refused():
    """CuPy would pass a Python int as a 64-bit integer to an ``int`` parameter: never allowed."""
    k = emulator.kernel("fc::roi_pool<float, 1, false>")
    x = np.zeros((1, 1, 2, 2), np.float32)
    rois = np.zeros((1, 5), np.float32)
    out = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(TypeError, match="numpy scalar"):
        k((1,), (32,), (x, rois, out, 1, np.int32(1), np.int32(1), np.int32(2), np.int32(2),
                        np.int32(1), np.int32(1), np.float32(1)))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_box_check_counts_as_the_host(dtype):
    """roi_count_bad_boxes (a block sums its threads' counts in static shared memory, which
    the emulator refills with NaN/-1 before every block) counts the bad rows exactly."""
    from fastconv.backends.cupy import roi as cupy_roi

    rng = np.random.default_rng(8)
    for k in (1, 7, 300, 2500):  # one thread, a partial block, several rows per thread
        boxes = np.concatenate([rng.integers(-1, 4, (k, 1)), rng.uniform(0, 9, (k, 4))],
                               axis=1).astype(dtype)
        boxes[rng.random(k) < 0.1, 2] = np.inf
        boxes[rng.random(k) < 0.1, 0] = 0.5
        host = [not (0 <= b[0] < 3 and b[0] == int(b[0]) and np.isfinite(b[1:]).all())
                for b in boxes.astype(np.float64)]
        assert cupy_roi.count_bad_boxes(boxes, 3) == sum(host), k


def test_dynamic_shared_memory_over_48_kib_is_refused():
    """As on a GPU, where more needs the kernel's opt-in attribute (never set by fastconv)."""
    k = emulator.kernel("fc::roi_pool<float, 1, false>")
    x = np.zeros((1, 1, 2, 2), np.float32)
    rois = np.zeros((1, 5), np.float32)
    out = np.zeros((1, 1, 1, 1), np.float32)
    args = (x, rois, out, *(np.int32(v) for v in (1, 1, 1, 2, 2, 1, 1)), np.float32(1))
    k((1,), (32,), args, shared_mem=48 * 1024)
    with pytest.raises(ValueError, match="without opting in"):
        k((1,), (32,), args, shared_mem=48 * 1024 + 1)


def test_argument_types_are_checked_against_the_kernel():
    k = emulator.kernel("fc::roi_pool<float, 1, false>")
    x = np.zeros((1, 1, 2, 2), np.float32)
    rois = np.zeros((1, 5), np.float64)  # double boxes for a float kernel
    out = np.zeros((1, 1, 1, 1), np.float32)
    args = (x, rois, out, *(np.int32(v) for v in (1, 1, 1, 2, 2, 1, 1)), np.float32(1))
    with pytest.raises(RuntimeError, match=r"kernel parameters are \(f4\*,f4\*"):
        k((1,), (32,), args)
    args = (x, rois.astype(np.float32), out, *args[3:-1], np.float64(1))  # double scale
    with pytest.raises(RuntimeError, match="kernel parameters"):
        k((1,), (32,), args)


@pytest.fixture
def fused_deform_everywhere(monkeypatch):
    """deform_conv2d through deform_conv2d_gemm wherever its table fits, for any channel count."""
    monkeypatch.setattr(cupy_deform, "DEFORM_FUSED", True)
    monkeypatch.setattr(cupy_conv, "GEMM_MIN_KG", 1)
    cupy_deform.fused_config.cache_clear()
    yield
    cupy_deform.fused_config.cache_clear()


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(ORACLE_SETTINGS, max_examples=max(1, N_EXAMPLES // 2))
@given(data=st.data())
def test_random_deform_cases_through_the_fused_kernel(fused_deform_everywhere, monkeypatch,
                                                      splits, dtype, data):
    """The random deform_conv2d configurations (offset groups, strides, dilations, masks,
    samples outside the image) through deform_conv2d_gemm, unsplit and split-K."""
    monkeypatch.setattr(cupy_conv, "SPLIT_K", splits)
    check_random_case("deform_conv2d", BACKEND, np.dtype(dtype), data)


def test_fused_deform_applies_where_its_table_fits():
    from fastconv import _cases

    case = _cases.get("deform_dcnv2").inputs("full", 0)
    x, w = case.arrays["input"], case.arrays["weight"]
    shapes = (x.shape, w.shape, (2, 64, 64, 64), (1, 1), (1, 1), (1, 1), 1, 1, True, False)
    name, grid, smem, _, splits = cupy_deform.fused_config(*shapes, "f", 64 * 132)
    assert name == "fc::deform_conv2d_gemm<float, 3, false>" and splits == 1
    assert smem == 9 * 128 * 21 and grid == 64  # 8192 columns / 128, one tile of 64 channels
    assert cupy_deform.fused_config(*shapes, "d", 64 * 132) is None  # double: table too big
    # split-K as conv2d_gemm chooses it: few tiles for 132 SMs, a reduction of 576
    assert cupy_deform.fused_config(*shapes, "f", 64 * 132, None)[4] == 4
    narrow = (x.shape, (16, 64, 3, 3), (2, 16, 64, 64), *shapes[3:])
    assert cupy_deform.fused_config(*narrow, "f", 64 * 132) is None  # C_out/groups < 32
    assert cupy_deform.offset_group_span(64, 1, 1) == 1
    assert cupy_deform.offset_group_span(8, 2, 4) == 2
    assert cupy_deform.offset_group_span(6, 3, 2) == 2  # group 1 holds channels 2, 3
    assert cupy_deform.offset_group_span(6, 1, 3) == 3
    no_channels = ((2, 0, 64, 64), (64, 0, 3, 3), *shapes[2:])
    assert cupy_deform.fused_config(*no_channels, "f", 64 * 132) is None


def test_fused_deform_without_input_channels_gives_the_bias(fused_deform_everywhere):
    rng = np.random.default_rng(4)
    arrays = dict(input=np.zeros((2, 0, 5, 6), np.float32),
                  offset=rng.standard_normal((2, 18, 5, 6)).astype(np.float32),
                  weight=np.zeros((3, 0, 3, 3), np.float32),
                  bias=rng.standard_normal(3).astype(np.float32),
                  mask=rng.uniform(0, 1, (2, 9, 5, 6)).astype(np.float32))
    out = fastconv.deform_conv2d(**arrays, padding=1, backend=BACKEND)
    np.testing.assert_array_equal(out, np.broadcast_to(arrays["bias"][None, :, None, None],
                                                       (2, 3, 5, 6)))


def test_the_gpu_sanitizer_driver_reaches_every_kernel():
    """bench/gpu_sanitize_driver.py (compute-sanitizer's workload on a GPU) launches every
    registered instantiation, optional paths included, and matches the oracle: here on
    the emulated backend, so a new kernel without a driver case fails in CI."""
    driver = bench_script("gpu_sanitize_driver")
    assert driver.main(["--backends", BACKEND]) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_exact_transposed_pass_runs_only_where_a_weight_is_not_finite(dtype):
    """exact_if_nonfinite after the phase GEMM: with finite weights the gathering kernel
    exits at once (the output keeps what the GEMM wrote: a sentinel here); with a NaN in
    the last block's share of the weights it recomputes the output as the oracle does."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(5)
    x = _rand(rng, (1, 16, 4, 5), dtype)
    w = _rand(rng, (16, 16, 3, 3), dtype)  # 2304 values: 2 blocks of nonfinite_blocks
    params = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    out = np.full((1, 16, 7, 9), 7.0, dtype)

    def launches():
        return cupy_conv.exact_if_nonfinite(x, w, None, out, *params.values(), 1, 100,
                                            np.empty)

    names = [launch[0].split("<")[0] for launch in launches()]
    assert names == ["fc::nonfinite_blocks", "fc::conv_transpose2d_direct"]
    assert launches()[0][1] == 2  # blocks
    _module.run(launches())
    assert (out == 7.0).all()
    w[-1, -1, -1, -1] = np.nan
    _module.run(launches())
    ref = reference.conv_transpose2d(x, w, **params)
    assert np.isnan(out).any()
    assert _random_cases.relative_error(out, ref) <= _random_cases.TOLERANCE[dtype]
