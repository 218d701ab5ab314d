"""The cpu backend called from several Python threads at once, and from forked processes.

Threads: the kernels release the GIL, so calls from a thread pool overlap.  Under numba's
``workqueue`` threading layer (its fallback where neither TBB nor an OpenMP runtime is
found) two overlapping parallel launches abort the process; the backend then takes turns
(``fastconv.backends.cpu.use_device``).

Fork: a child forked after its parent ran a kernel on GNU OpenMP cannot start OpenMP
again (numba terminates it, and a ``multiprocessing.Pool`` waits forever); the kernels'
serial twins run there instead (``fastconv.backends.cpu._config.parallel_kernel``).

Each case runs in a fresh process, since a process picks its threading layer once.
"""

import os
import subprocess
import sys
import textwrap

import pytest

CALLS = textwrap.dedent("""
    import numpy as np, numba
    import fastconv
    from fastconv import image

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    off = rng.standard_normal((2, 18, 12, 12)).astype(np.float32)
    boxes = np.array([[0, 1, 1, 9, 7], [1, 0, 2, 11, 11]], np.float32)
    img = rng.random((20, 24)).astype(np.float32)
    calls = [
        lambda: fastconv.conv2d(x, w, padding=2, dilation=2),
        lambda: fastconv.conv_transpose2d(x, w, stride=2, padding=1),
        lambda: fastconv.deform_conv2d(x, off, w, padding=1),
        lambda: fastconv.roi_align(x, boxes, 3, 1.0, 2, True),
        lambda: image.pyramid_reduce(img),
        lambda: fastconv.conv2d(x, w[:, :1], padding=1, groups=8),
        lambda: fastconv.conv2d(x, w[:, :, :1, :1]),
    ]
    want = [f() for f in calls]

    def job(i):
        return np.array_equal(calls[i % len(calls)](), want[i % len(calls)])
""")

THREADS = CALLS + textwrap.dedent("""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        same = all(pool.map(job, range(40 * len(calls))))
    print("LAYER", numba.threading_layer(), "SAME", same)
""")


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_concurrent_calls_from_threads(layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", THREADS], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    assert words[-1] == "True", proc.stdout
    if layer == "workqueue":
        assert words[1] == "workqueue", proc.stdout


FORK = CALLS + textwrap.dedent("""
    import multiprocessing

    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # a child that dies makes the pool wait forever: time out instead
            same = pool.map_async(job, range(2 * len(calls))).get(timeout=300)
        print("LAYER", numba.threading_layer(), "SAME", all(same))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_calls_in_processes_forked_after_the_parent_ran_kernels(layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", FORK], env=env, capture_output=True,
                          text=True, timeout=900)
    if layer == "omp" and "No threading layer could be loaded" in proc.stderr:
        pytest.skip("no OpenMP runtime for numba here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    assert words[1] == layer and words[-1] == "True", proc.stdout
