"""Region crops and a flow warp on ``skimage.data.coins()``.

1. Segment the coins (Otsu threshold, hole filling, labelling), take every coin's
   ``regionprops`` bounding box and cut all of them to 32 x 32 patches in one
   :func:`fastconv.image.crop_regions` call (RoIAlign).  Every box is larger than the
   patch, so each patch equals ``skimage.transform.resize(crop, (32, 32), order=1,
   anti_aliasing=False)`` of the cropped box -- checked.  ``sampling_ratio=-1``
   averages each patch pixel's footprint instead (anti-aliased).
2. Warp the image with a smooth ripple displacement field through
   :func:`fastconv.image.warp_by_flow` (deform_conv2d), equal to
   ``skimage.transform.warp(image, coords, order=1)`` -- checked.

    python docs/examples/coins_regions.py [--out DIR]
"""

import numpy as np
from _figure import compare_times, out_dir, save_panels
from scipy import ndimage as ndi
from skimage import data, filters, measure, morphology, segmentation, transform
from skimage.util import img_as_float

from fastconv import image


def main(argv=None):
    out = out_dir(argv, __doc__.splitlines()[0])
    coins = data.coins()  # 303 x 384 uint8
    cf = img_as_float(coins)

    square = morphology.footprint_rectangle((3, 3))
    mask = morphology.closing(coins > filters.threshold_otsu(coins), square)
    mask = segmentation.clear_border(ndi.binary_fill_holes(mask))
    regions = [r for r in measure.regionprops(measure.label(mask)) if r.area > 200]
    boxes = np.array([r.bbox for r in regions])  # (min_row, min_col, max_row, max_col)
    sizes = boxes[:, 2:] - boxes[:, :2]
    print(f"{len(boxes)} coins, boxes {sizes.min()} to {sizes.max()} px")

    shape = (32, 32)
    patches = image.crop_regions(coins, boxes, shape)

    def crop_resize():
        return np.stack([transform.resize(cf[r0:r1, c0:c1], shape, order=1, anti_aliasing=False)
                         for r0, c0, r1, c1 in boxes])

    ref = crop_resize()
    err = float(np.abs(patches - ref).max())
    t_ours, t_peer = compare_times(lambda: image.crop_regions(coins, boxes, shape), crop_resize)
    print(f"crop_regions {patches.shape}: max |diff| vs crop + resize = {err:.1e}; "
          f"{t_ours * 1e3:.2f} ms vs {t_peer * 1e3:.2f} ms ({t_peer / t_ours:.1f}x)")
    assert err < 1e-12
    smooth = image.crop_regions(coins, boxes, shape, sampling_ratio=-1)

    h, w = coins.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    flow = np.stack([4.0 * np.sin(2 * np.pi * cols / 64.0), 4.0 * np.cos(2 * np.pi * rows / 48.0)])
    warped = image.warp_by_flow(coins, flow)
    coords = np.stack([rows + flow[0], cols + flow[1]])
    ref = transform.warp(cf, coords, order=1)
    err = float(np.abs(warped - ref).max())
    t_ours, t_peer = compare_times(lambda: image.warp_by_flow(coins, flow),
                                   lambda: transform.warp(cf, coords, order=1))
    print(f"warp_by_flow: max |diff| vs skimage.transform.warp(order=1) = {err:.1e}; "
          f"{t_ours * 1e3:.2f} ms vs {t_peer * 1e3:.2f} ms ({t_peer / t_ours:.1f}x)")
    assert err < 1e-12

    grid = np.ones((4 * 34, 6 * 34))
    for k in range(min(len(patches), 24)):
        r, c = divmod(k, 6)
        grid[r * 34 + 1:r * 34 + 33, c * 34 + 1:c * 34 + 33] = patches[k]
    grid_aa = np.ones_like(grid)
    for k in range(min(len(smooth), 24)):
        r, c = divmod(k, 6)
        grid_aa[r * 34 + 1:r * 34 + 33, c * 34 + 1:c * 34 + 33] = smooth[k]
    labelled = cf.copy()
    for r0, c0, r1, c1 in boxes:
        labelled[r0, c0:c1] = labelled[r1 - 1, c0:c1] = 1.0
        labelled[r0:r1, c0] = labelled[r0:r1, c1 - 1] = 1.0
    panels = [("coins + regionprops boxes", labelled, False),
              ("32x32 patches (sampling 1)", grid, False),
              ("patches, sampling_ratio=-1", grid_aa, False),
              ("warp_by_flow (ripple)", warped, False)]
    print("figure:", save_panels(out / "coins_regions.png", panels, cols=4, size=230))


if __name__ == "__main__":
    main()
