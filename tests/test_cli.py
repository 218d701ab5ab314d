import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True)


def test_info_lists_backends():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    for name in ("cpu", "reference", "cupy", "numba_cuda", "numba threads"):
        assert name in out.stdout


def test_check_passes_on_cpu():
    out = _run("check", "--backends", "cpu", "--cases", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" pass ") == 10  # five ops x two dtypes
    assert "all checks passed" in out.stdout
