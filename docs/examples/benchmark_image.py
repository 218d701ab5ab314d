"""Speed of fastconv.image against scikit-image and SciPy on the CPU (the issue's claims).

* pyramids (reduce, expand, the whole Gaussian and Laplacian pyramids) of the 512 x 512 RGB
  ``skimage.data.astronaut()`` -- claim: at least 3x faster than ``skimage.transform``;
* dilated 3 x 3 correlation of the 512 x 512 ``skimage.data.camera()`` -- claim: faster than
  ``scipy.ndimage.correlate`` with the zero-dilated kernel for dilation > 1.

Peer and fastconv are timed interleaved (A B A B ...) after a warm-up call, and the
median of ``--repeat`` runs is compared, with 1 and 2 numba threads (the machine this
ran on is shared and noisy: only the ratios mean something).  Every result is also
checked against the peer.

    python docs/examples/benchmark_image.py [--repeat 15] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import _figure  # noqa: F401  (puts the checkout's fastconv first on sys.path)
import numba
import numpy as np
from scipy import ndimage as ndi
from skimage import data, transform
from skimage.util import img_as_float

from fastconv import image


def interleaved(a, b, repeat):
    a(), b()  # warm-up (JIT compile, caches)
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


@numba.njit(parallel=True, cache=True)
def _touch(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0


def region_latency(threads, repeat=50):
    """Median time of an (almost) empty numba parallel region after 2 ms of idleness.

    That is the price of waking the worker threads, paid by every parallel kernel
    that follows some Python work; on an idle machine it is tens of microseconds.
    """
    numba.set_num_threads(threads)
    a = np.zeros(64)
    _touch(a)
    ts = []
    for _ in range(repeat):
        time.sleep(0.002)
        t0 = time.perf_counter()
        _touch(a)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def max_diff(a, b):
    if isinstance(a, list):
        return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    return float(np.abs(a - b).max())


def cases():
    rgb = data.astronaut()
    cam = img_as_float(data.camera())
    k = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    out = []
    for name in ("pyramid_reduce", "pyramid_expand", "pyramid_gaussian", "pyramid_laplacian"):
        fc, sk = getattr(image, name), getattr(transform, name)
        listed = name in ("pyramid_gaussian", "pyramid_laplacian")

        def ours(fc=fc, listed=listed):
            r = fc(rgb, channel_axis=-1)
            return list(r) if listed else r

        def peer(sk=sk, listed=listed):
            r = sk(rgb, channel_axis=-1)
            return list(r) if listed else r

        out.append((f"{name} astronaut 512x512x3", "skimage", 3.0, ours, peer))
    for d in (1, 2, 4, 8, 16):
        dk = np.zeros((2 * d + 1, 2 * d + 1))
        dk[::d, ::d] = k
        out.append((f"correlate camera 512x512 3x3 d={d}", "scipy", 1.0 if d > 1 else None,
                    lambda d=d: image.correlate(cam, k, dilation=d),
                    lambda dk=dk: ndi.correlate(cam, dk)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; numba {numba.__version__}")
    for nt in args.threads:
        nt = min(nt, numba.config.NUMBA_NUM_THREADS)
        print(f"# waking the thread pool ({nt} thread(s)): {region_latency(nt) * 1e3:.3f} ms "
              "per parallel kernel")
    print(f"{'case / peer':48s} {'thr':>3s} {'fastconv ms':>12s} {'peer ms':>10s} {'speed-up':>9s} "
          f"{'target':>7s} {'max |diff|':>11s}")
    failed = []
    for label, peer_name, target, ours, peer in cases():
        label = f"{label} / {peer_name}"
        err = max_diff(ours(), peer())
        for nt in args.threads:
            numba.set_num_threads(min(nt, numba.config.NUMBA_NUM_THREADS))
            ta, tb = interleaved(ours, peer, args.repeat)
            ok = target is None or tb / ta >= target
            if not ok:
                failed.append((label, nt))
            print(f"{label:48s} {nt:3d} {ta * 1e3:12.2f} {tb * 1e3:10.2f} {tb / ta:8.1f}x "
                  f"{'' if target is None else f'>={target:g}x':>7s} {err:11.1e}"
                  f"{'' if ok else '  MISSED'}")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
