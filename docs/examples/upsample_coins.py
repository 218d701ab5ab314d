"""FCN-style upsampling of a coarse map of ``skimage.data.coins()``, three ways.

A 1/8-resolution map (three :func:`fastconv.image.pyramid_reduce` steps) is brought
back to full resolution with

1. :func:`fastconv.upsample` (``mode="bilinear"``, PyTorch's ``interpolate`` rule) --
   equal to ``skimage.transform.resize(order=1, mode="edge", anti_aliasing=False)``;
   ``mode="nearest"`` with an integer factor equals ``resize(order=0)``;
2. :func:`fastconv.conv_transpose2d` with :func:`fastconv.bilinear_kernel` (stride 8,
   padding 4), the learnable FCN layer initialised to bilinear weights: equal to (1)
   except in a 4-pixel border band, where the zero padding darkens it; dividing by the
   transposed convolution of ones (normalised convolution) recovers (1) exactly.

It also prints :func:`fastconv.receptive_field` of a small dilated network.

    python docs/examples/upsample_coins.py [--out DIR]
"""

import numpy as np
from _figure import out_dir, save_panels
from skimage import data, transform

from fastconv import conv_transpose2d, image
from fastconv.receptive import receptive_field  # also fastconv.receptive_field
from fastconv.upsample import bilinear_kernel, upsample  # also fastconv.upsample, ...


def main(argv=None):
    out = out_dir(argv, __doc__.splitlines()[0])
    coins = data.coins()[:296, :384]  # a multiple of 8
    coarse = coins
    for _ in range(3):
        coarse = image.pyramid_reduce(coarse)  # 37 x 48 float64
    x = coarse[None, None]  # NCHW

    up = upsample(x, scale_factor=8, mode="bilinear")[0, 0]
    ref = transform.resize(coarse, coins.shape, order=1, mode="edge", anti_aliasing=False)
    print(f"upsample bilinear {coarse.shape} -> {up.shape}: max |diff| vs skimage resize = "
          f"{np.abs(up - ref).max():.1e}")
    assert np.abs(up - ref).max() < 1e-12
    near = upsample(x, scale_factor=8)[0, 0]
    ref0 = transform.resize(coarse, coins.shape, order=0, anti_aliasing=False)
    print(f"upsample nearest: max |diff| vs resize(order=0) = {np.abs(near - ref0).max():.1e}")
    assert np.abs(near - ref0).max() == 0

    k = bilinear_kernel(1, 8, dtype=np.float64)  # (1, 1, 16, 16)
    fcn = conv_transpose2d(x, k, stride=8, padding=4)[0, 0]
    ones = conv_transpose2d(np.ones_like(x), k, stride=8, padding=4)[0, 0]
    band = 4  # factor // 2
    inner = (slice(band, -band), slice(band, -band))
    print(f"conv_transpose2d + bilinear_kernel: max |diff| inside = "
          f"{np.abs(fcn - up)[inner].max():.1e}, in the {band}-px border band = "
          f"{np.abs(fcn - up).max():.2f}; normalised: {np.abs(fcn / ones - up).max():.1e}")
    assert np.abs(fcn - up)[inner].max() < 1e-12 and np.abs(fcn / ones - up).max() < 1e-12

    layers = [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
              dict(kernel_size=3, dilation=2, padding=2), dict(kernel_size=3, dilation=4,
                                                               padding=4)]
    for i, r in enumerate(receptive_field(layers)):
        print(f"layer {i}: receptive field {r.size} px, jump {r.jump}, start {r.start}")

    panels = [("1/8 map (pyramid_reduce x3)", coarse, False),
              ("upsample bilinear", up, False),
              ("conv_transpose2d + bilinear_kernel", fcn, False),
              ("difference, top-left 40x52 (zoom)", (fcn - up)[:40, :52], True)]
    print("figure:", save_panels(out / "upsample_coins.png", panels, cols=4, size=230))


if __name__ == "__main__":
    main()
