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


@pytest.mark.parametrize("name", ["cupy", "numba_cuda"])
def test_unusable_gpu_backend_says_what_is_missing(name):
    ok, why = _dispatch.backend_status(name)
    if ok:
        pytest.skip(f"{name} is usable here")
    assert "pip install" in why or "GPU" in why or "CUDA" in why, why
    with pytest.raises(fastconv.BackendUnavailableError):
        _dispatch.get_backend(name)
