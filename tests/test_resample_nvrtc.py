"""Compile ``kernels/resample.cu`` with NVRTC for sm_80 and sm_90, every instantiation used.

Runs without a GPU and without CuPy, with the compile helper of
``tests/test_cupy_nvrtc.py`` (same source splicing, CuPy's options, warnings as
errors).  Also checks that the launch plans of ``fastconv.backends.cupy.resample``
only name registered instantiations with typed scalar arguments.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) not installed")

from test_cupy_nvrtc import ARCHS, compile_file, include_dir  # noqa: E402,F401  (fixture)

from fastconv.backends.cupy import _module, resample  # noqa: E402  (must not import cupy)


@pytest.mark.parametrize("arch", ARCHS)
def test_resample_compiles(arch, include_dir):  # noqa: F811 - the imported fixture
    names = resample.all_name_expressions()
    assert len(names) == len(resample.KERNELS) * len(_module.CTYPES)
    lowered, log = compile_file(resample.FILE, arch, names, include_dir)
    assert "warning" not in log.lower(), f"NVRTC warnings for resample.cu ({arch}):\n{log}"
    assert set(lowered) == set(names)
    assert all(low.startswith("_Z") for low in lowered.values()), lowered
    assert len(set(lowered.values())) == len(names), "two name expressions share a kernel"


class _Arr:
    """A shape/dtype stand-in for a cupy array."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def test_plans_use_registered_kernels():
    registered = set(resample.all_name_expressions())
    used = set()
    for dt in ("float32", "float64", "float16"):
        acc = np.float64 if dt == "float64" else np.float32
        x = _Arr((2, 3, 9, 7), dt)
        i1, i2 = _Arr((5,), np.int64), _Arr((2, 5), np.int64)
        w2 = _Arr((2, 5), acc)
        plans = resample.plan_gather(x, i1, i1, _Arr((2, 3, 5, 5), dt), 0.5)
        plans += resample.plan_lerp(x, i2, w2, i2, w2, _Arr((2, 3, 5, 5), dt), 0.0)
        plans += resample.plan_sepfilter(
            x, _Arr((3,), acc), _Arr((13,), np.int64), _Arr((3,), acc), _Arr((11,), np.int64),
            _Arr((2, 3, 9, 7), dt), _Arr((2, 3, 9, 7), dt), (2, 2), 0.0)
        for kernel, dtype, total, args in plans:
            name = _module.expr(kernel, _module.CTYPES[np.dtype(dtype)])
            assert name in registered, name
            assert total > 0
            for a in args:
                assert isinstance(a, (_Arr, np.int32, np.float32, np.float64)), (name, type(a))
                if isinstance(a, (np.float32, np.float64)):
                    assert type(a) is acc, (name, type(a))
            used.add(kernel)
    assert used == set(resample.KERNELS)


def test_module_does_not_import_cupy():
    import subprocess
    import sys

    code = (
        "import sys, fastconv.backends.cupy.resample as r; r.all_name_expressions(); "
        "r._module.source(r.FILE); assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
