"""Tiny figure helper for the examples: labelled image panels in a grid, saved as a PNG.

Uses Pillow (a scikit-image dependency), so the examples need no plotting library.
Importing it also puts the checkout's ``fastconv`` first on ``sys.path`` when the
examples run from a source tree (``python docs/examples/<name>.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
_ROOT = HERE.parents[1]
if (_ROOT / "fastconv" / "__init__.py").exists() and "fastconv" not in sys.modules:
    sys.path.insert(0, str(_ROOT))


def out_dir(argv=None, description=""):
    """Parse ``--out DIR`` (default: this directory) and return it as a Path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(HERE), help="where to write the PNG figure")
    return Path(parser.parse_args(argv).out)


def compare_times(ours, peer, repeat=5):
    """Median seconds of ``ours()`` and ``peer()``, timed interleaved after a warm-up call."""
    ours(), peer()
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ours()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer()
        tb.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def to_uint8(a, symmetric=False):
    """Scale a float image to 0..255 (``symmetric``: 0 maps to mid-grey, for signed data)."""
    a = np.asarray(a, dtype=np.float64)
    if symmetric:
        m = float(np.abs(a).max()) or 1.0
        a = (a / m + 1) / 2
    else:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_panels(path, panels, cols=4, size=200):
    """``panels``: list of ``(title, image, symmetric)``; each is fitted into ``size`` pixels."""
    tiles = []
    for title, img, symmetric in panels:
        tile = Image.fromarray(to_uint8(img, symmetric))
        scale = size / max(tile.size)
        new = (max(1, round(tile.size[0] * scale)), max(1, round(tile.size[1] * scale)))
        tiles.append((title, tile.resize(new, Image.NEAREST if scale > 1 else Image.BILINEAR)))
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    title_h, gap = 16, 8
    heights = [max(t.size[1] for _, t in row) + title_h + gap for row in rows]
    sheet = Image.new("RGB", (min(cols, len(tiles)) * (size + gap), sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = gap // 2
    for row, height in zip(rows, heights, strict=True):
        for k, (title, tile) in enumerate(row):
            x0 = k * (size + gap) + gap // 2
            draw.text((x0, y0), title, fill="black")
            sheet.paste(tile, (x0, y0 + title_h))
        y0 += height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=128).save(path, optimize=True)  # a palette keeps the PNG small
    return path
