"""Run the numba.cuda kernels under the CUDA simulator (``tests/cudasim``) in a subprocess.

``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is first imported, so the simulator
tests need a process of their own; this test starts it and shows its output on failure.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.cudasim
@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason='numba-cuda is not installed (pip install "numba-cuda[cu13]")',
)
def test_numba_cuda_kernels_in_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "cudasim"),
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--rootdir",
        str(ROOT),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"simulator tests failed ({' '.join(cmd)}):\n{output[-30000:]}"
    assert " passed" in output, output[-5000:]
