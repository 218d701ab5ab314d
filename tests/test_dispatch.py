import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _dispatch


def test_import_does_not_load_gpu_stacks():
    code = ("import sys, fastconv, numpy as np; "
            "fastconv.conv2d(np.ones((1,1,3,3)), np.ones((1,1,2,2))); "
            "print(sorted(m for m in sys.modules if m.startswith(('cupy', 'numba.cuda'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("obj,kind", [(np.zeros(2), "numpy"), ([1.0, 2.0], "numpy")])
def test_array_kind(obj, kind):
    assert _dispatch.array_kind(obj) == kind


def test_cuda_array_interface_objects_count_as_gpu():
    class Foreign:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    assert _dispatch.array_kind(Foreign()) == "cai"
    with pytest.raises(TypeError, match="cannot mix host and GPU arrays"):
        fastconv.conv2d(np.zeros((1, 1, 3, 3)), Foreign())


def _general_prepare(backend, **arrays):
    """``prepare`` with its native-host shortcut turned off."""
    shortcut = _dispatch._prepare_native_host
    _dispatch._prepare_native_host = lambda backend, arrays: None
    try:
        return _dispatch.prepare(backend, **arrays)
    finally:
        _dispatch._prepare_native_host = shortcut


@pytest.mark.parametrize("backend", [None, "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_host_shortcut_gives_the_general_answer(backend, dtype):
    x, w = np.ones((1, 2, 3, 3), dtype), np.ones((4, 2, 1, 1), dtype)
    for bias in (None, np.ones(4, dtype)):
        fast = _dispatch.prepare(backend, input=x, weight=w, bias=bias)
        slow = _general_prepare(backend, input=x, weight=w, bias=bias)
        assert (fast.name, fast.module, fast.dtype, fast.result_kind, fast.device) == (
            slow.name, slow.module, slow.dtype, slow.result_kind, slow.device)
        assert fast.arrays.keys() == slow.arrays.keys()
        assert all(fast.arrays[k] is slow.arrays[k] for k in fast.arrays)


@pytest.mark.parametrize("arrays", [
    dict(input=np.ones((1, 2, 3, 3), np.float16), weight=np.ones((4, 2, 1, 1), np.float16)),
    dict(input=np.ones((1, 2, 3, 3), np.float32), weight=np.ones((4, 2, 1, 1), np.float64)),
    dict(input=np.ones((1, 2, 3, 3), np.int32), weight=np.ones((4, 2, 1, 1), np.int32)),
    dict(input=np.ones((1, 2, 3, 3), ">f4"), weight=np.ones((4, 2, 1, 1), ">f4")),
    dict(input=[[[[1.0]]]], weight=np.ones((1, 1, 1, 1))),
    dict(input=np.ma.ones((1, 1, 1, 1)), weight=np.ones((1, 1, 1, 1))),
], ids=["float16", "mixed", "int32", "big-endian", "list", "masked"])
def test_native_host_shortcut_leaves_the_rest_to_the_general_path(arrays):
    """Anything but plain native float32/float64 ndarrays of one dtype is not taken by the
    shortcut: the general path converts it or words the error."""
    assert _dispatch._prepare_native_host(None, arrays) is None


def test_reference_backend_keeps_the_dtype():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    out = fastconv.conv2d(x, w, backend="reference")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, fastconv.conv2d(x, w), rtol=1e-5, atol=1e-5)


def test_non_contiguous_and_negative_strides_give_the_same_result():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 10))
    w = rng.standard_normal((4, 3, 3, 3))
    flipped = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    wide = np.repeat(x, 2, axis=3)[..., ::2]
    for view in (flipped, wide, np.asfortranarray(x)):
        np.testing.assert_array_equal(fastconv.conv2d(view, w, padding=1),
                                      fastconv.conv2d(x, w, padding=1))


def test_read_only_inputs_compile_no_new_kernels():
    """Read-only arrays (a memory map opened "r", np.frombuffer) give the same results
    and reach the kernels as writeable copies: numba would compile every kernel again
    for read-only argument types."""
    import numba

    from fastconv.backends.cpu import conv as cpu_conv
    from fastconv.backends.cpu import roi as cpu_roi

    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 9, 10)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    boxes = np.array([[0, 1, 1, 8, 7]], np.float32)
    want = (fastconv.conv2d(x, w, b, padding=1), fastconv.roi_align(x, boxes, 2, 1.0, 2))
    frozen = [np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape) for a in (x, w, b, boxes)]
    assert not any(a.flags.writeable for a in frozen)
    got = (fastconv.conv2d(*frozen[:3], padding=1), fastconv.roi_align(frozen[0], frozen[3], 2,
                                                                      1.0, 2))
    for g, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, r)
    kernels = [k.parallel for k in cpu_conv._ROWS_KERNELS.values()]
    kernels += [cpu_roi._roi_align_planar.parallel, cpu_roi._roi_align_nhwc.parallel,
                cpu_roi._count_bad_boxes, cpu_roi._scan_boxes]
    signatures = [sig for k in kernels for sig in k.signatures]
    read_only = [sig for sig in signatures
                 if any(isinstance(t, numba.types.Array) and not t.mutable for t in sig)]
    assert signatures and not read_only, read_only


@pytest.mark.parametrize("name", ["cupy", "numba_cuda"])
def test_unusable_gpu_backend_says_what_is_missing(name):
    ok, why = _dispatch.backend_status(name)
    if ok:
        pytest.skip(f"{name} is usable here")
    assert "pip install" in why or "GPU" in why or "CUDA" in why, why
    with pytest.raises(fastconv.BackendUnavailableError):
        _dispatch.get_backend(name)


# ------------------------------------------------------------------ boxes built on the device


def _host_rois(boxes, dtype, batch=3):
    call = _dispatch.Call("cpu", _dispatch.get_backend("cpu"), {}, np.dtype(dtype), "numpy")
    return _dispatch.prepare_boxes(call, boxes, batch, check=True)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_stack_boxes_matches_the_host_path(dtype):
    """What the cupy backend runs with cupy on the device, run here with numpy."""
    rng = np.random.default_rng(0)
    per_image = [rng.uniform(0, 9, (4, 4)), np.zeros((0, 4)), rng.integers(0, 9, (2, 4))]
    for items, is_list in [(per_image, True), ([], True), ([np.zeros((0, 4))], True),
                           ([np.c_[np.array([2, 0, 1]), rng.uniform(0, 9, (3, 4))]], False)]:
        got = _dispatch.stack_boxes(np, items, is_list, np.dtype(dtype))
        want = _host_rois(items if is_list else items[0], dtype)
        assert got.dtype == want.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


class _OnDevice:
    """A host array dressed as a GPU array (array kind "cai") for the fake backend below."""

    __cuda_array_interface__ = {}

    def __init__(self, a):
        self.a = np.asarray(a)


class _FakeGpuBackend:
    """A GPU backend whose "device" arrays are numpy arrays, recording what ran there."""

    def __init__(self):
        self.ran = []

    def as_native(self, obj):
        return obj.a

    def device_id(self, a):
        return 0

    def use_device(self, device):
        import contextlib

        return contextlib.nullcontext()

    def ascontiguous(self, a):
        return np.ascontiguousarray(a)

    def stack_boxes(self, items, is_list, dtype):
        self.ran.append("stack")
        return _dispatch.stack_boxes(np, items, is_list, dtype)

    def count_bad_boxes(self, rois, batch):
        self.ran.append("check")
        idx = rois[:, 0].astype(np.float64)
        ok = np.isfinite(rois).all(axis=1) & (idx == np.floor(idx)) & (idx >= 0) & (idx < batch)
        return int((~ok).sum())

    def to_host(self, a):
        self.ran.append("to_host")
        return np.asarray(a)


@pytest.mark.parametrize("check", [True, False])
def test_list_boxes_are_built_and_checked_on_the_device(check):
    module = _FakeGpuBackend()
    call = _dispatch.Call("fake", module, {}, np.dtype(np.float32), "cai", device=0)
    per_image = [np.array([[0, 1, 5, 6.0]]), np.array([[1, 0, 6, 3.5], [2, 2, 3, 3.0]])]
    got = _dispatch.prepare_boxes(call, [_OnDevice(b) for b in per_image], 2, check)
    np.testing.assert_array_equal(got, _host_rois(per_image, np.float32, batch=2))
    assert module.ran == (["stack", "check"] if check else ["stack"])  # no host round trip
    # float64 (K, 5) boxes for a float32 input: converted on the device as well
    module.ran.clear()
    k5 = np.array([[1, 0, 6, 3.5, 2.0]])
    got = _dispatch.prepare_boxes(call, _OnDevice(k5), 2, check)
    assert got.dtype == np.float32 and module.ran == (["stack", "check"] if check else ["stack"])


def test_bad_list_boxes_found_on_the_device_are_worded_by_the_host_path():
    module = _FakeGpuBackend()
    call = _dispatch.Call("fake", module, {}, np.dtype(np.float32), "cai", device=0)
    per_image = [np.array([[0, 1, 5, 6.0]]), np.array([[1, 0, np.nan, 3.5]])]
    with pytest.raises(ValueError, match="boxes must be finite, row 1"):
        _dispatch.prepare_boxes(call, [_OnDevice(b) for b in per_image], 2, True)
    assert module.ran[:2] == ["stack", "check"] and "to_host" in module.ran


def _swapped(a):
    """``a`` in the other byte order (same values), as read from a big-endian file."""
    return a.astype(a.dtype.newbyteorder("S"))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_native_byte_order_gives_the_native_result(backend, dtype):
    rng = np.random.default_rng(2)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, w, b = draw(2, 4, 9, 10), draw(6, 2, 3, 3), draw(6)
    wt = draw(4, 3, 4, 4)
    offset, mask = draw(2, 18, 9, 10), rng.uniform(size=(2, 9, 9, 10)).astype(dtype)
    wd = draw(5, 4, 3, 3)
    boxes = np.array([[0, 1.0, 2.0, 7.5, 8.0], [1, 0.5, 0.0, 9.0, 4.0]], dtype)
    calls = [
        (fastconv.conv2d, (x, w, b), dict(padding=2, dilation=2, groups=2)),
        (fastconv.conv_transpose2d, (x, wt, None), dict(stride=2, padding=1, groups=2)),
        (fastconv.deform_conv2d, (x, offset, wd), dict(padding=1, mask=mask)),
        (fastconv.roi_align, (x, boxes), dict(output_size=3, sampling_ratio=2, aligned=True)),
        (fastconv.roi_pool, (x, boxes), dict(output_size=3)),
    ]
    for fn, arrays, params in calls:
        swapped = [None if a is None else _swapped(a) for a in arrays]
        params_swapped = {k: _swapped(v) if isinstance(v, np.ndarray) else v
                          for k, v in params.items()}
        assert not swapped[0].dtype.isnative
        before = [None if a is None else a.copy() for a in swapped]
        out = fn(*swapped, **params_swapped, backend=backend)
        want = fn(*arrays, **params, backend=backend)
        assert out.dtype == np.dtype(dtype), fn.__name__
        np.testing.assert_array_equal(out, want, err_msg=fn.__name__)
        for a, a0 in zip(swapped, before, strict=True):
            if a is not None:
                assert a.dtype == a0.dtype, f"{fn.__name__} changed an input's dtype"
                np.testing.assert_array_equal(a, a0, err_msg=f"{fn.__name__} wrote an input")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_image_toolkit_takes_non_native_byte_order(backend):
    from fastconv import image

    rng = np.random.default_rng(3)
    img = (rng.uniform(size=(20, 24)) * 1000).astype(np.int16)
    flow = rng.standard_normal((2, 20, 24))
    for native in (img, img.astype(np.float32)):
        swapped = _swapped(native)
        for got, want in (
            (list(image.pyramid_gaussian(swapped, max_layer=2, backend=backend)),
             list(image.pyramid_gaussian(native, max_layer=2, backend=backend))),
            ([image.correlate(swapped, _swapped(np.ones((3, 3))), dilation=2, backend=backend)],
             [image.correlate(native, np.ones((3, 3)), dilation=2, backend=backend)]),
            ([image.warp_by_flow(swapped, _swapped(flow), backend=backend)],
             [image.warp_by_flow(native, flow, backend=backend)]),
        ):
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype and g.dtype.isnative
                np.testing.assert_array_equal(g, w)
