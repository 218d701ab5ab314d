import os
import subprocess
import sys

import pytest


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


def test_info_lists_backends():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    for name in ("cpu", "reference", "cupy", "numba_cuda", "numba threads", "cpu target:"):
        assert name in out.stdout


def test_info_names_a_portable_target_and_its_missing_fma():
    """``NUMBA_CPU_NAME=generic`` (a portable cache) compiles SSE2 code without FMA: 3-4x
    slower than the host's own, which ``info`` says."""
    from fastconv.backends.cpu import _config

    if not _config.target_is_x86():
        pytest.skip("the generic target lacks FMA only on x86")
    out = _run("info", env={"NUMBA_CPU_NAME": "generic"})
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("cpu target:"))
    assert "generic, SSE, no FMA" in line and "NUMBA_CPU_NAME" in line, line


def test_check_passes_on_cpu():
    out = _run("check", "--backends", "cpu", "--cases", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" pass ") == 10  # five ops x two dtypes
    assert "all checks passed" in out.stdout
