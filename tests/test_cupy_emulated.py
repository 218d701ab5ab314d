"""Run the cupy backend's CUDA C kernels on the CPU (``tests/cupy_emu``), in a process of their own.

The kernels are compiled by g++ against a small CUDA emulator and registered as
the backend ``"cupy_emulated"``; the child process runs every test of the suite
that takes the ``backend`` fixture, plus ``tests/cupy_emu``, on that backend.
With AddressSanitizer available (``g++ -print-file-name=libasan.so``) the
child preloads it and the kernels are built with ``-fsanitize=address,undefined``,
so an out-of-bounds access or a signed index overflow fails the run (the CPU
counterpart of ``compute-sanitizer --tool memcheck``).  A second child runs one
case per kernel instantiation under ThreadSanitizer: a missing ``__syncthreads``
between a shared-memory write and another thread's read is a data race there
(the counterpart of ``--tool racecheck``).
"""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cupy_emu import emulator  # noqa: E402

CXX = emulator.compiler()
pytestmark = [
    pytest.mark.cupyemu,
    pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or $CXX) to build the emulator"),
    # the child process sets FASTCONV_TEST_BACKENDS: never start a child from a child
    pytest.mark.skipif("FASTCONV_TEST_BACKENDS" in os.environ,
                       reason="already inside a run with FASTCONV_TEST_BACKENDS set"),
]


@functools.cache
def _runtime(name: str) -> str | None:
    """The path of a sanitizer's shared run time (``libasan.so``, ``libtsan.so``), if any."""
    if CXX is None:
        return None
    out = subprocess.run([CXX, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


#: random configurations per op x dtype in the emulated child (the suite's default is 200):
#: under AddressSanitizer the child is the suite's longest test, and the emulator also
#: runs fixed cases of every kernel instantiation (tests/cupy_emu/test_kernel_paths.py).
#: FASTCONV_TEST_EXAMPLES, when set, applies to the child as well.
EMULATED_EXAMPLES = "100"


def _env(sanitizer: str) -> dict:
    env = dict(os.environ, FASTCONV_TEST_BACKENDS=emulator.NAME)
    env.setdefault("FASTCONV_TEST_EXAMPLES", EMULATED_EXAMPLES)
    if sanitizer == "address" and _runtime("libasan.so"):
        env.update(
            LD_PRELOAD=_runtime("libasan.so"),
            # Python itself is not leak-free at exit; stop at the first report of anything else
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
            UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        )
    elif sanitizer == "thread" and _runtime("libtsan.so"):
        env.update(LD_PRELOAD=_runtime("libtsan.so"), TSAN_OPTIONS="halt_on_error=1")
    return env


def _run_child(sanitizer: str, *selection: str) -> None:
    env = _env(sanitizer)
    cmd = [
        sys.executable, "-m", "pytest", *selection, "-q",
        "--capture=sys",  # keep fd 2 free: a sanitizer report goes straight to our pipe
        "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(ROOT),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    how = f"preloading {env['LD_PRELOAD']}" if "LD_PRELOAD" in env else "without sanitizers"
    assert proc.returncode == 0, (
        f"emulated cupy kernels failed ({how}; {' '.join(cmd)}):\n{output[-30000:]}")
    assert " passed" in output, output[-5000:]


def test_cupy_kernels_in_the_emulator():
    """Every backend test of the suite on ``"cupy_emulated"``, with AddressSanitizer and UBSan."""
    _run_child("address", str(ROOT / "tests"))


@pytest.mark.skipif(_runtime("libtsan.so") is None,
                    reason="ThreadSanitizer's run time is not available")
def test_no_shared_memory_races():
    """One case per instantiation under ThreadSanitizer (barriers give the happens-before)."""
    _run_child("thread", str(ROOT / "tests" / "cupy_emu" / "test_kernel_paths.py"),
               "-k", "every_instantiation")


@pytest.mark.skipif(_runtime("libasan.so") is None,
                    reason="AddressSanitizer's run time is not available")
def test_the_sanitizer_catches_an_out_of_bounds_read():
    """The memory check is live: a gather table pointing past the image aborts the run."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        sys.path.insert(0, "tests")
        from cupy_emu import emulator
        emulator.install()
        x = np.zeros((1, 1, 2, 2), np.float32)
        out = np.zeros((1, 1, 1, 1), np.float32)
        table = np.array([2], np.int64)  # row 2 of a 2-row image: just past its end
        k = emulator.kernel("fc::resample_gather<float>")
        k((1,), (32,), (x, table, np.zeros(1, np.int64), out, np.int32(1), np.int32(2),
                        np.int32(2), np.int32(1), np.int32(1), np.float32(0)))
        print("no report")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env("address"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "no report" not in proc.stdout, proc.stdout + proc.stderr
    assert "AddressSanitizer" in proc.stderr and "resample_gather" in proc.stderr, proc.stderr
