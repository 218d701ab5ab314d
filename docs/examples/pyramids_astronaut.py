"""Gaussian and Laplacian pyramids of ``skimage.data.astronaut()`` with fastconv.image.

The same calls as ``skimage.transform.pyramid_gaussian`` / ``pyramid_laplacian``
(same parameters, same float64 layers), checked layer by layer against scikit-image
and timed against it.  Then the coarsest Gaussian layer is brought back to full size
with :func:`fastconv.upsample` (PyTorch's bilinear rule), which equals
``skimage.transform.resize(order=1, mode="edge", anti_aliasing=False)``.

    python docs/examples/pyramids_astronaut.py [--out DIR]
"""

import numpy as np
from _figure import compare_times, out_dir, save_panels
from skimage import data, transform

from fastconv import image
from fastconv.upsample import upsample  # also fastconv.upsample


def main(argv=None):
    out = out_dir(argv, __doc__.splitlines()[0])
    rgb = data.astronaut()  # 512 x 512 x 3 uint8

    def gauss():
        return list(image.pyramid_gaussian(rgb, channel_axis=-1))

    def gauss_sk():
        return list(transform.pyramid_gaussian(rgb, channel_axis=-1))

    def lapl():
        return list(image.pyramid_laplacian(rgb, channel_axis=-1))

    def lapl_sk():
        return list(transform.pyramid_laplacian(rgb, channel_axis=-1))

    ours, peer = gauss(), gauss_sk()
    t_ours, t_peer = compare_times(gauss, gauss_sk)
    assert len(ours) == len(peer)
    err = max(float(np.abs(a - b).max()) for a, b in zip(ours, peer, strict=True))
    print(f"Gaussian pyramid: {len(ours)} layers {[a.shape[:2] for a in ours]}")
    print(f"  max |fastconv - skimage| = {err:.1e}; {t_ours * 1e3:.1f} ms vs "
          f"{t_peer * 1e3:.1f} ms ({t_peer / t_ours:.1f}x)")
    assert err < 1e-6

    lap, lap_sk = lapl(), lapl_sk()
    t_ours, t_peer = compare_times(lapl, lapl_sk)
    err = max(float(np.abs(a - b).max()) for a, b in zip(lap, lap_sk, strict=True))
    print(f"Laplacian pyramid: {len(lap)} layers; max |diff| = {err:.1e}; "
          f"{t_ours * 1e3:.1f} ms vs {t_peer * 1e3:.1f} ms ({t_peer / t_ours:.1f}x)")
    assert err < 1e-6

    # back to full size from layer 3 (64 x 64): fastconv.upsample works on NCHW
    small = ours[3]
    nchw = np.ascontiguousarray(small.transpose(2, 0, 1)[None])
    up = upsample(nchw, size=rgb.shape[:2], mode="bilinear")[0].transpose(1, 2, 0)
    ref = transform.resize(small, rgb.shape[:2], order=1, mode="edge", anti_aliasing=False)
    err = float(np.abs(up - ref).max())
    print(f"upsample(bilinear) of layer 3 vs skimage resize(order=1, mode='edge'): {err:.1e}")
    assert err < 1e-12

    panels = [(f"gaussian {i} {a.shape[0]}x{a.shape[1]}", a, False) for i, a in
              enumerate(ours[:4])]
    panels += [(f"laplacian {i}", a.mean(axis=-1), True) for i, a in enumerate(lap[:3])]
    panels += [("layer 3 upsampled", up, False)]
    print("figure:", save_panels(out / "pyramids_astronaut.png", panels, cols=4, size=180))


if __name__ == "__main__":
    main()
