"""Every bad input raises ValueError/TypeError naming the argument and value, before any kernel runs."""

import numpy as np
import pytest

import fastconv
import fastconv.backends.cpu as cpu_backend

f32, f64 = np.float32, np.float64
X = np.zeros((1, 4, 8, 8), f32)
W = np.zeros((6, 2, 3, 3), f32)
XD = np.zeros((1, 4, 8, 8), f32)
OFF = np.zeros((1, 18, 8, 8), f32)
WD = np.zeros((5, 4, 3, 3), f32)
BOX = np.array([[0, 1, 1, 5, 5]], f32)

C2 = fastconv.conv2d
CT = fastconv.conv_transpose2d
DC = fastconv.deform_conv2d
RA = fastconv.roi_align
RP = fastconv.roi_pool

CASES = {
    # conv2d
    "input ndim": (lambda: C2(X[0], W, groups=2), ValueError, "input must be 4-D"),
    "weight ndim": (lambda: C2(X, W[0], groups=2), ValueError, "weight must be 4-D"),
    "groups mismatch": (lambda: C2(X, W), ValueError, "groups=1"),
    "groups zero": (lambda: C2(X, W, groups=0), ValueError, "groups must be a positive int, got 0"),
    "groups float": (lambda: C2(X, W, groups=2.0), TypeError, "groups must be an int"),
    "out channels vs groups": (lambda: C2(X, W[:5], groups=2), ValueError, "divisible by groups=2"),
    "stride zero": (lambda: C2(X, W, stride=0, groups=2), ValueError, "stride must be positive, got 0"),
    "stride negative pair": (lambda: C2(X, W, stride=(1, -2), groups=2), ValueError, "(1, -2)"),
    "stride bool": (lambda: C2(X, W, stride=True, groups=2), TypeError, "stride must be an int"),
    "stride triple": (lambda: C2(X, W, stride=(1, 1, 1), groups=2), ValueError, "(1, 1, 1)"),
    "dilation zero": (lambda: C2(X, W, dilation=0, groups=2), ValueError, "dilation must be positive"),
    "padding negative": (lambda: C2(X, W, padding=-1, groups=2), ValueError, "padding must be non-negative, got -1"),
    "padding word": (lambda: C2(X, W, padding="full", groups=2), ValueError, "'full'"),
    "same with stride": (lambda: C2(X, W, padding="same", stride=2, groups=2), ValueError, "needs stride 1"),
    "empty output": (lambda: C2(X, W, dilation=5, groups=2), ValueError, "output size is empty"),
    "bias shape": (lambda: C2(X, W, np.zeros(5, f32), groups=2), ValueError, "bias must have shape (6,)"),
    "int dtype": (lambda: C2(X.astype(np.int32), W, groups=2), TypeError, "input must have dtype"),
    "half on cpu": (lambda: C2(X.astype(np.float16), W.astype(np.float16), groups=2), TypeError, "float16"),
    "mixed dtypes": (lambda: C2(X, W.astype(f64), groups=2), TypeError, "weight has dtype float64"),
    "bias dtype": (lambda: C2(X, W, np.zeros(6), groups=2), TypeError, "bias has dtype float64"),
    "unknown backend": (lambda: C2(X, W, groups=2, backend="tpu"), ValueError, "unknown backend 'tpu'"),
    "backend type": (lambda: C2(X, W, groups=2, backend=1), TypeError, "backend must be a str"),
    "gpu backend on numpy": (lambda: C2(X, W, groups=2, backend="cupy"), TypeError, "runs on GPU arrays"),
    "kernel empty": (lambda: C2(X, np.zeros((6, 2, 0, 3), f32), groups=2), ValueError, "non-empty kernel"),
    # conv_transpose2d
    "ct weight channels": (lambda: CT(X, np.zeros((3, 2, 3, 3), f32)), ValueError, "weight.shape[0] must equal input channels"),
    "ct groups": (lambda: CT(X, np.zeros((4, 2, 3, 3), f32), groups=3), ValueError, "divisible by groups=3"),
    "ct output_padding": (lambda: CT(X, np.zeros((4, 2, 3, 3), f32), stride=2, output_padding=2), ValueError, "output_padding must be smaller"),
    "ct output_padding negative": (lambda: CT(X, np.zeros((4, 2, 3, 3), f32), output_padding=-1), ValueError, "output_padding must be non-negative"),
    "ct padding same": (lambda: CT(X, np.zeros((4, 2, 3, 3), f32), padding="same"), ValueError, "'same'"),
    "ct empty output": (lambda: CT(X, np.zeros((4, 2, 1, 1), f32), padding=5), ValueError, "output size is empty"),
    "ct bias": (lambda: CT(X, np.zeros((4, 2, 3, 3), f32), np.zeros(3, f32)), ValueError, "bias must have shape (2,)"),
    # deform_conv2d
    "dc offset channels": (lambda: DC(XD, OFF[:, :17], WD, padding=1), ValueError, "multiple of 2 * kH * kW = 18"),
    "dc offset size": (lambda: DC(XD, OFF[:, :, :7], WD, padding=1), ValueError, "offset must have shape (1, 18, 8, 8)"),
    "dc offset batch": (lambda: DC(XD, np.zeros((2, 18, 8, 8), f32), WD, padding=1), ValueError, "offset must have shape"),
    "dc offset groups": (lambda: DC(XD, np.zeros((1, 54, 8, 8), f32), WD, padding=1), ValueError, "offset groups"),
    "dc mask shape": (lambda: DC(XD, OFF, WD, padding=1, mask=np.zeros((1, 18, 8, 8), f32)), ValueError, "mask must have shape (1, 9, 8, 8)"),
    "dc mask dtype": (lambda: DC(XD, OFF, WD, padding=1, mask=np.zeros((1, 9, 8, 8))), TypeError, "mask has dtype float64"),
    "dc weight groups": (lambda: DC(XD, OFF, np.zeros((5, 3, 3, 3), f32), padding=1), ValueError, "multiple of weight.shape[1]"),
    "dc offset ndim": (lambda: DC(XD, OFF[0], WD, padding=1), ValueError, "offset must be 4-D"),
    # roi_align / roi_pool
    "roi boxes shape": (lambda: RA(X, BOX[:, :4], 2), ValueError, "boxes must have shape (K, 5)"),
    "roi list shape": (lambda: RA(X, [BOX], 2), ValueError, "boxes[0] must have shape (L, 4)"),
    "roi batch fractional": (lambda: RA(X, np.array([[0.5, 1, 1, 5, 5]], f32), 2), ValueError, "row 0 has 0.5"),
    "roi batch range": (lambda: RP(X, np.array([[1, 1, 1, 5, 5]], f32), 2), ValueError, "[0, 1)"),
    "roi batch negative": (lambda: RP(X, np.array([[-1, 1, 1, 5, 5]], f32), 2), ValueError, "-1"),
    "roi nan box": (lambda: RA(X, np.array([[0, np.nan, 1, 5, 5]], f32), 2), ValueError, "boxes must be finite"),
    "roi inf box": (lambda: RP(X, np.array([[0, 1, 1, np.inf, 5]], f32), 2), ValueError, "boxes must be finite"),
    # finite in float64, inf in the input's float32: checked as the kernels would see it
    "roi box too large for the dtype": (lambda: RA(X, np.array([[0, 1, 1, 1e39, 5]]), 2), ValueError,
                                        "boxes must be finite"),
    "roi list too long": (lambda: RA(X, [BOX[:, 1:], BOX[:, 1:]], 2), ValueError, "[0, 1)"),
    "roi output size": (lambda: RA(X, BOX, (0, 2)), ValueError, "output_size must be positive"),
    "roi scale": (lambda: RA(X, BOX, 2, spatial_scale=0), ValueError, "spatial_scale must be finite and positive"),
    "roi scale nan": (lambda: RP(X, BOX, 2, spatial_scale=float("nan")), ValueError, "spatial_scale"),
    "roi scale type": (lambda: RP(X, BOX, 2, spatial_scale="1"), TypeError, "spatial_scale must be a real"),
    "roi sampling": (lambda: RA(X, BOX, 2, sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
    "roi aligned": (lambda: RA(X, BOX, 2, aligned="yes"), TypeError, "aligned must be a bool"),
    "roi boxes dtype": (lambda: RA(X, BOX.astype(bool), 2), TypeError, "boxes must hold real numbers"),
    "roi input ndim": (lambda: RP(X[0], BOX, 2), ValueError, "input must be 4-D"),
    "roi input dtype": (lambda: RP(X.astype(np.int64), BOX, 2), TypeError, "input must have dtype"),
}


@pytest.fixture
def kernels_must_not_run(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were validated")

    for op in ("conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool"):
        monkeypatch.setattr(cpu_backend, op, boom)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_before_any_kernel(name, kernels_must_not_run):
    call, exc_type, fragment = CASES[name]
    with pytest.raises(exc_type) as info:
        call()
    assert fragment in str(info.value), f"{info.value!r} does not mention {fragment!r}"
    # values are shown as Python writes them, not as NumPy scalars' reprs ("np.float32(0.5)")
    assert "np." not in str(info.value), info.value


def test_valid_boxes_can_skip_the_check():
    # check_boxes=False skips the scan; valid boxes give the same result
    a = RA(X, BOX, 2, check_boxes=False)
    np.testing.assert_array_equal(a, RA(X, BOX, 2))


def test_memoised_specs_still_reject_equal_values_of_the_wrong_type():
    """The spec cache is keyed on types: 1 == True == 1.0, but only 1 is a valid stride."""
    from fastconv import _args

    good = C2(X, W, stride=1, groups=2)  # fills the cache for stride=1, (2, 2)
    C2(X, W, stride=(2, 2), groups=2)
    for bad, exc in [(True, TypeError), (1.0, TypeError), ((2.0, 2), TypeError),
                     ((True, 1), TypeError), ("1", TypeError)]:
        with pytest.raises(exc, match="stride"):
            C2(X, W, stride=bad, groups=2)
    # numpy integers and lists are fine (lists go round the cache), and give the same result
    np.testing.assert_array_equal(C2(X, W, stride=np.int64(1), groups=np.int32(2)), good)
    np.testing.assert_array_equal(C2(X, W, stride=[1, 1], groups=2), good)
    # an error is never cached: the same bad call raises again
    for _ in range(2):
        with pytest.raises(ValueError, match="groups=1"):
            C2(X, W)
    # each call gets its own copy of the spec
    spec = _args.conv2d_spec((1, 4, 8, 8), (6, 2, 3, 3), None, 1, 0, 1, 2)
    spec["stride"] = "changed"
    assert _args.conv2d_spec((1, 4, 8, 8), (6, 2, 3, 3), None, 1, 0, 1, 2)["stride"] == (1, 1)
