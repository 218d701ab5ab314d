"""Every numba.cuda kernel compiles to PTX for compute capability 9.0 (no GPU needed).

Float32 and float64 signatures (with and without the optional bias / mask arrays) go
through ``numba.cuda.compile_ptx``.  The PTX is also checked for what the kernels are
written to guarantee: register tiles never spill to local memory, device functions are
inlined (no calls), and float32 kernels do no float64 arithmetic.

numba.cuda is imported inside the tests only, so collecting this file does not import it.
"""

import importlib
import importlib.util
import os
import re

import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("numba_cuda") is None,
        reason='numba-cuda is not installed (pip install "numba-cuda[cu13]")',
    ),
    pytest.mark.skipif(
        os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
        reason="compile_ptx is not available in the CUDA simulator",
    ),
]

MODULES = ["conv", "deform", "roi", "_copy"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("module", MODULES)
def test_kernels_compile_to_ptx(module, dtype):
    from numba import cuda

    mod = importlib.import_module(f"fastconv.backends.numba_cuda.{module}")
    cases = mod.ptx_cases(dtype)
    assert cases
    problems = []
    for name, kernel, argtypes in cases:
        ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))
        if ".entry" not in ptx or ".target sm_90" not in ptx:
            problems.append(f"{name}: no sm_90 kernel entry in the PTX")
        if re.search(r"\b(ld|st)\.local\b", ptx):
            problems.append(f"{name}: uses local memory (a register tile spilled)")
        if re.search(r"\bcall(\.uni)?\b", ptx):
            problems.append(f"{name}: calls a function (a device function was not inlined)")
        if dtype == np.float32 and re.search(r"\.f64\b", ptx):
            problems.append(f"{name}: float64 arithmetic in a float32 kernel")
    assert not problems, "\n".join(problems)


def test_every_kernel_is_covered():
    """Each ``numba.cuda.jit`` kernel of the five ops' modules appears in its ``ptx_cases``."""
    import ast
    from pathlib import Path

    import fastconv.backends.numba_cuda as pkg

    root = Path(pkg.__file__).parent
    for module in MODULES:
        defined = set()
        for node in ast.walk(ast.parse((root / f"{module}.py").read_text())):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    src = ast.unparse(dec)
                    if src.startswith("cuda.jit") and "device=True" not in src:
                        defined.add(node.name)
        mod = importlib.import_module(f"fastconv.backends.numba_cuda.{module}")
        covered = {k.py_func.__name__ for _, k, _ in mod.ptx_cases(np.float32)}
        assert defined and defined <= covered, f"{module}: no PTX check for {defined - covered}"


def test_kernels_compile_where_numpy_has_no_row_stack():
    """numpy 2.5 removed ``np.row_stack``; numba-cuda <= 0.30.4 refers to it when it builds
    its target.  The backend lends the alias for that one import: a conv kernel compiles and
    numpy is left without ``row_stack`` afterwards (own process: numpy's namespace is changed)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, scipy._lib._array_api\n"  # scipy lists numpy's names at import
        "if hasattr(np, 'row_stack'): del np.row_stack\n"
        "from numba import cuda\n"
        "from fastconv.backends.numba_cuda import conv\n"
        "name, kernel, argtypes = conv.ptx_cases(np.float32)[0]\n"
        "ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))\n"
        "assert '.entry' in ptx\n"
        "assert not hasattr(np, 'row_stack')\n"
        "print('compiled', name)\n"
    )
    pytest.importorskip("scipy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled" in proc.stdout
