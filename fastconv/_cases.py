"""The benchmark cases of ``shared/BENCHMARKS.md`` as data, with their inputs and costs.

Used by ``python -m fastconv bench`` (:mod:`fastconv._bench`) and by the
pytest-benchmark suite in ``bench/``.  Importing this module imports only NumPy.

Every case exists in three sizes:

``"full"``
    the shapes of BENCHMARKS.md (what the recorded runs time);
``"small"``
    fewer channels / boxes and smaller images, same kernel geometry: for the
    NumPy oracle (``backend="reference"``), which is ~100-1000x slower;
``"tiny"``
    a few channels and pixels: for the CI test of the benchmark machinery.

Inputs are float32 NCHW (float64 on request) drawn from a generator seeded
with ``(seed, crc32(case name))``: data and offsets standard normal, weights
normal scaled by ``1/sqrt(fan_in)`` (so outputs are O(1) and relative errors
mean something), DCNv2 masks uniform in [0, 1), boxes uniform as BENCHMARKS.md
says.  Never zeros.

Costs (``Case.cost``):

* **FLOPs** -- conv2d: ``2 N C_out H_out W_out (C_in/groups) kH kW`` (every tap,
  padding included, the usual convention); conv_transpose2d: ``2 N C_in H W
  (C_out/groups) kH kW``; deform_conv2d: the conv2d count plus 8 per sampled
  value (bilinear: 4 multiplies + 3 adds, 1 for the mask; 7 without mask) per
  ``(n, c_in, tap, output pixel)``; roi_align: 8 per sample per channel (bilinear
  + accumulate) plus 1 per output (the mean), with the per-box adaptive grid
  counted exactly; roi_pool: 1 comparison per input element of every bin,
  counted exactly from the boxes.
* **compulsory bytes** -- every input array read once plus the output written
  once (the minimum traffic to and from memory).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

OPS = ("conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool")
SIZES = ("full", "small", "tiny")

#: the library that provides the peer of each op (torch / torchvision)
PEER_NAME = {
    "conv2d": "torch.nn.functional.conv2d",
    "conv_transpose2d": "torch.nn.functional.conv_transpose2d",
    "deform_conv2d": "torchvision.ops.deform_conv2d",
    "roi_align": "torchvision.ops.roi_align",
    "roi_pool": "torchvision.ops.roi_pool",
}

#: array arguments of each op, in the order of the public signature
ARRAY_ARGS = {
    "conv2d": ("input", "weight"),
    "conv_transpose2d": ("input", "weight"),
    "deform_conv2d": ("input", "offset", "weight", "mask"),
    "roi_align": ("input", "boxes"),
    "roi_pool": ("input", "boxes"),
}


@dataclass(frozen=True)
class Inputs:
    """One case's arguments: arrays (numpy) and the scalar keyword arguments."""

    op: str
    arrays: dict
    params: dict

    def call_fastconv(self, backend=None, arrays=None, **extra):
        """``fastconv.<op>(**arrays, **params, backend=backend)``."""
        import fastconv

        fn = getattr(fastconv, self.op)
        return fn(**(self.arrays if arrays is None else arrays), **self.params, **extra,
                  backend=backend)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values() if a is not None))


@dataclass(frozen=True)
class Case:
    """One row of BENCHMARKS.md: an op, its shapes per size, its targets."""

    name: str
    op: str
    shape: str  # the shape text of BENCHMARKS.md
    variants: dict  # size -> geometry dict (see _inputs_*)
    target_cpu: float | None  # ratio fastconv/peer, lower is better
    target_gpu: float | None
    target_gpu_bw: float | None = None  # fraction of measured copy bandwidth (GPU)
    default: bool = True  # part of the default `bench` run
    peers: tuple = ("torch",)  # peers the CLI may use, first available wins
    note: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def peer_name(self) -> str:
        return PEER_NAME[self.op]

    def geometry(self, size: str = "full") -> dict:
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        return dict(self.variants[size])

    def inputs(self, size: str = "full", seed: int = 0, dtype=np.float32) -> Inputs:
        """Seeded inputs for this case (a new set of arrays on every call)."""
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        g = self.geometry(size)
        dtype = np.dtype(dtype)
        return _MAKERS[self.op](g, rng, dtype)

    def cost(self, size: str = "full", dtype=np.float32) -> dict:
        """``{"flops", "bytes", "out_shape"}`` for this case (memoised)."""
        key = (size, np.dtype(dtype).str)
        if key not in self._cache:
            inp = self.inputs(size, dtype=dtype)
            out_shape, flops = _COSTS[self.op](inp)
            out_bytes = int(np.prod(out_shape)) * np.dtype(dtype).itemsize
            self._cache[key] = {
                "flops": int(flops),
                "bytes": inp.nbytes() + out_bytes,
                "out_shape": tuple(int(s) for s in out_shape),
            }
        return dict(self._cache[key])

    def describe(self, size: str = "full") -> str:
        if size == "full":
            return self.shape
        g = self.geometry(size)
        return ", ".join(f"{k}={v}" for k, v in g.items())


# ----------------------------------------------------------------------------- input makers


def _normal(rng, shape, dtype, scale=1.0):
    a = rng.standard_normal(shape, dtype=np.float64) * scale
    return a.astype(dtype)


def _inputs_conv2d(g, rng, dtype):
    n, c_in, h, w = g["x"]
    c_out, kh, kw = g["c_out"], g["k"][0], g["k"][1]
    groups = g.get("groups", 1)
    fan_in = (c_in // groups) * kh * kw
    arrays = {
        "input": _normal(rng, (n, c_in, h, w), dtype),
        "weight": _normal(rng, (c_out, c_in // groups, kh, kw), dtype, 1 / math.sqrt(fan_in)),
    }
    params = {
        "stride": g.get("stride", 1),
        "padding": g.get("padding", 0),
        "dilation": g.get("dilation", 1),
        "groups": groups,
    }
    return Inputs("conv2d", arrays, params)


def _inputs_conv_transpose2d(g, rng, dtype):
    n, c_in, h, w = g["x"]
    c_out, kh, kw = g["c_out"], g["k"][0], g["k"][1]
    groups = g.get("groups", 1)
    stride = g.get("stride", 1)
    # each output pixel receives about (C_in/groups) * kH*kW / (sH*sW) products
    s_h, s_w = _pair(stride)
    fan_in = max(1.0, (c_in // groups) * kh * kw / (s_h * s_w))
    arrays = {
        "input": _normal(rng, (n, c_in, h, w), dtype),
        "weight": _normal(rng, (c_in, c_out // groups, kh, kw), dtype, 1 / math.sqrt(fan_in)),
    }
    params = {
        "stride": stride,
        "padding": g.get("padding", 0),
        "output_padding": g.get("output_padding", 0),
        "groups": groups,
        "dilation": g.get("dilation", 1),
    }
    return Inputs("conv_transpose2d", arrays, params)


def _inputs_deform_conv2d(g, rng, dtype):
    from ._args import conv_out_size

    n, c_in, h, w = g["x"]
    c_out, kh, kw = g["c_out"], g["k"][0], g["k"][1]
    og = g.get("offset_groups", 1)
    groups = g.get("groups", 1)
    stride, padding, dilation = g.get("stride", 1), g.get("padding", 0), g.get("dilation", 1)
    h_out = conv_out_size(h, kh, stride, 2 * padding, dilation)
    w_out = conv_out_size(w, kw, stride, 2 * padding, dilation)
    fan_in = (c_in // groups) * kh * kw
    arrays = {
        "input": _normal(rng, (n, c_in, h, w), dtype),
        "offset": _normal(rng, (n, 2 * og * kh * kw, h_out, w_out), dtype),
        "weight": _normal(rng, (c_out, c_in // groups, kh, kw), dtype, 1 / math.sqrt(fan_in)),
        "mask": (
            rng.uniform(0.0, 1.0, (n, og * kh * kw, h_out, w_out)).astype(dtype)
            if g.get("mask", True) else None
        ),
    }
    params = {"stride": stride, "padding": padding, "dilation": dilation}
    return Inputs("deform_conv2d", arrays, params)


def _boxes(g, rng, dtype):
    n = g["x"][0]
    k = g["boxes"]
    img_w, img_h = g["image"]
    lo, hi = g["box_wh"]
    x1 = rng.uniform(0.0, img_w, k)
    y1 = rng.uniform(0.0, img_h, k)
    bw = rng.uniform(lo, hi, k)
    bh = rng.uniform(lo, hi, k)
    batch = rng.integers(0, n, k).astype(np.float64)
    return np.stack([batch, x1, y1, x1 + bw, y1 + bh], axis=1).astype(dtype)


def _inputs_roi_align(g, rng, dtype):
    arrays = {"input": _normal(rng, g["x"], dtype), "boxes": _boxes(g, rng, dtype)}
    params = {
        "output_size": g["output_size"],
        "spatial_scale": g["spatial_scale"],
        "sampling_ratio": g.get("sampling_ratio", -1),
        "aligned": g.get("aligned", False),
    }
    return Inputs("roi_align", arrays, params)


def _inputs_roi_pool(g, rng, dtype):
    arrays = {"input": _normal(rng, g["x"], dtype), "boxes": _boxes(g, rng, dtype)}
    params = {"output_size": g["output_size"], "spatial_scale": g["spatial_scale"]}
    return Inputs("roi_pool", arrays, params)


_MAKERS = {
    "conv2d": _inputs_conv2d,
    "conv_transpose2d": _inputs_conv_transpose2d,
    "deform_conv2d": _inputs_deform_conv2d,
    "roi_align": _inputs_roi_align,
    "roi_pool": _inputs_roi_pool,
}


# ----------------------------------------------------------------------------- costs


def _cost_conv2d(inp):
    from ._args import conv2d_spec

    x, w = inp.arrays["input"], inp.arrays["weight"]
    p = inp.params
    spec = conv2d_spec(x.shape, w.shape, None, p["stride"], p["padding"], p["dilation"],
                       p["groups"])
    h_out, w_out = spec["out_hw"]
    c_out, c_per_group, kh, kw = w.shape
    out_shape = (x.shape[0], c_out, h_out, w_out)
    return out_shape, 2 * x.shape[0] * c_out * h_out * w_out * c_per_group * kh * kw


def _cost_conv_transpose2d(inp):
    from ._args import conv_transpose2d_spec

    x, w = inp.arrays["input"], inp.arrays["weight"]
    p = inp.params
    spec = conv_transpose2d_spec(x.shape, w.shape, None, p["stride"], p["padding"],
                                 p["output_padding"], p["groups"], p["dilation"])
    c_in, c_out_pg, kh, kw = w.shape
    n, _, h, wd = x.shape
    out_shape = (n, c_out_pg * spec["groups"], *spec["out_hw"])
    return out_shape, 2 * n * c_in * h * wd * c_out_pg * kh * kw


def _cost_deform_conv2d(inp):
    x, off, w, m = (inp.arrays[k] for k in ("input", "offset", "weight", "mask"))
    n, c_in, _, _ = x.shape
    c_out, c_per_group, kh, kw = w.shape
    h_out, w_out = off.shape[2:]
    pixels = n * h_out * w_out
    mac = 2 * pixels * c_out * c_per_group * kh * kw
    sampling = pixels * c_in * kh * kw * (8 if m is not None else 7)
    return (n, c_out, h_out, w_out), mac + sampling


def _roi_grid(inp):
    """Per box: (samples per bin along h, along w) of roi_align, in torchvision's float32 math."""
    rois = inp.arrays["boxes"].astype(np.float32)
    p = inp.params
    ph, pw = _pair(p["output_size"])
    scale = np.float32(p["spatial_scale"])
    off = np.float32(0.5 if p["aligned"] else 0.0)
    x1, y1, x2, y2 = (rois[:, i] * scale - off for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not p["aligned"]:
        roi_w, roi_h = np.maximum(roi_w, 1), np.maximum(roi_h, 1)
    if p["sampling_ratio"] > 0:
        gh = np.full(len(rois), p["sampling_ratio"])
        gw = gh
    else:
        gh = np.ceil(roi_h / np.float32(ph)).astype(np.int64)
        gw = np.ceil(roi_w / np.float32(pw)).astype(np.int64)
    return np.maximum(gh, 0), np.maximum(gw, 0)


def _cost_roi_align(inp):
    x = inp.arrays["input"]
    ph, pw = _pair(inp.params["output_size"])
    gh, gw = _roi_grid(inp)
    c = x.shape[1]
    samples = int(np.sum(gh * gw)) * ph * pw  # per channel
    k = inp.arrays["boxes"].shape[0]
    return (k, c, ph, pw), c * (8 * samples + k * ph * pw)


def _cost_roi_pool(inp):
    x = inp.arrays["input"]
    rois = inp.arrays["boxes"].astype(np.float32)
    ph, pw = _pair(inp.params["output_size"])
    scale = np.float32(inp.params["spatial_scale"])
    h, w = x.shape[2:]

    def c_round(v):
        return np.sign(v) * np.floor(np.abs(v) + 0.5)

    def extent(start, size, pooled, limit):
        """Elements per bin along one axis: [floor(p*bin), ceil((p+1)*bin)) + start, clipped."""
        bin_size = np.float32(size) / np.float32(pooled)
        p = np.arange(pooled, dtype=np.float32)
        lo = np.floor(p * bin_size).astype(np.int64) + int(start)
        hi = np.ceil((p + 1) * bin_size).astype(np.int64) + int(start)
        lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
        return int(np.maximum(hi - lo, 0).sum())

    total = 0
    for r in rois:
        xs, ys, xe, ye = (int(c_round(r[i] * scale)) for i in (1, 2, 3, 4))
        rows = extent(ys, max(ye - ys + 1, 1), ph, h)
        cols = extent(xs, max(xe - xs + 1, 1), pw, w)
        total += rows * cols
    k, c = rois.shape[0], x.shape[1]
    return (k, c, ph, pw), c * total


_COSTS = {
    "conv2d": _cost_conv2d,
    "conv_transpose2d": _cost_conv_transpose2d,
    "deform_conv2d": _cost_deform_conv2d,
    "roi_align": _cost_roi_align,
    "roi_pool": _cost_roi_pool,
}


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


# ----------------------------------------------------------------------------- the cases


def _conv(x, c_out, k, **kw):
    return dict(x=x, c_out=c_out, k=k, **kw)


_FPN = dict(image=(1000.0, 700.0), box_wh=(16.0, 316.0), spatial_scale=1 / 16)
_FPN_TINY = dict(image=(250.0, 180.0), box_wh=(16.0, 100.0), spatial_scale=1 / 16)

_CASE_LIST = [
    Case(
        "dilated_aspp", "conv2d",
        "x 1x256x64x64, w 256x256x3x3, padding 6, dilation 6 (DeepLab ASPP branch)",
        {
            "full": _conv((1, 256, 64, 64), 256, (3, 3), padding=6, dilation=6),
            "small": _conv((1, 32, 32, 32), 32, (3, 3), padding=6, dilation=6),
            "tiny": _conv((1, 4, 16, 16), 4, (3, 3), padding=6, dilation=6),
        },
        target_cpu=1.5, target_gpu=1.25,
    ),
    Case(
        "dilated_small", "conv2d",
        "x 1x64x128x128, w 64x64x3x3, padding 2, dilation 2",
        {
            "full": _conv((1, 64, 128, 128), 64, (3, 3), padding=2, dilation=2),
            "small": _conv((1, 16, 32, 32), 16, (3, 3), padding=2, dilation=2),
            "tiny": _conv((1, 4, 12, 12), 4, (3, 3), padding=2, dilation=2),
        },
        target_cpu=1.5, target_gpu=1.25,
    ),
    Case(
        "grouped_resnext", "conv2d",
        "x 1x256x56x56, w 256x8x3x3, padding 1, groups 32",
        {
            "full": _conv((1, 256, 56, 56), 256, (3, 3), padding=1, groups=32),
            "small": _conv((1, 64, 28, 28), 64, (3, 3), padding=1, groups=8),
            "tiny": _conv((1, 8, 10, 10), 8, (3, 3), padding=1, groups=2),
        },
        target_cpu=1.0, target_gpu=1.0,
    ),
    Case(
        "depthwise", "conv2d",
        "x 1x256x56x56, w 256x1x3x3, padding 1, groups 256",
        {
            "full": _conv((1, 256, 56, 56), 256, (3, 3), padding=1, groups=256),
            "small": _conv((1, 64, 28, 28), 64, (3, 3), padding=1, groups=64),
            "tiny": _conv((1, 8, 10, 10), 8, (3, 3), padding=1, groups=8),
        },
        target_cpu=1.0, target_gpu=1.0, target_gpu_bw=0.7,
    ),
    Case(
        "transposed_fcn", "conv_transpose2d",
        "x 1x21x64x64, w 21x21x16x16, stride 8, padding 4 (FCN-8s upsampling)",
        {
            "full": _conv((1, 21, 64, 64), 21, (16, 16), stride=8, padding=4),
            "small": _conv((1, 8, 16, 16), 8, (16, 16), stride=8, padding=4),
            "tiny": _conv((1, 2, 4, 4), 3, (8, 8), stride=4, padding=2),
        },
        target_cpu=0.5, target_gpu=1.0,
    ),
    Case(
        "transposed_decoder", "conv_transpose2d",
        "x 1x128x64x64, w 128x64x4x4, stride 2, padding 1 (U-Net/LinkNet decoder)",
        {
            "full": _conv((1, 128, 64, 64), 64, (4, 4), stride=2, padding=1),
            "small": _conv((1, 32, 16, 16), 16, (4, 4), stride=2, padding=1),
            "tiny": _conv((1, 4, 6, 6), 2, (4, 4), stride=2, padding=1),
        },
        target_cpu=1.5, target_gpu=1.25,
    ),
    Case(
        "deform_dcnv2", "deform_conv2d",
        "x 2x64x64x64, offset 2x18x64x64 (normal), mask 2x9x64x64 (uniform), w 64x64x3x3, "
        "padding 1",
        {
            "full": _conv((2, 64, 64, 64), 64, (3, 3), padding=1),
            "small": _conv((1, 16, 24, 24), 16, (3, 3), padding=1),
            "tiny": _conv((1, 4, 8, 8), 4, (3, 3), padding=1),
        },
        target_cpu=0.2, target_gpu=0.5,
    ),
    Case(
        "roi_align_fpn", "roi_align",
        "x 1x256x50x68, 512 boxes (x,y uniform in 1000x700, w,h in [16,316)), 7x7, scale 1/16, "
        "sampling 2, aligned",
        {
            "full": dict(x=(1, 256, 50, 68), boxes=512, output_size=7, sampling_ratio=2,
                         aligned=True, **_FPN),
            "small": dict(x=(1, 32, 50, 68), boxes=64, output_size=7, sampling_ratio=2,
                          aligned=True, **_FPN),
            "tiny": dict(x=(1, 4, 12, 16), boxes=6, output_size=3, sampling_ratio=2,
                         aligned=True, **_FPN_TINY),
        },
        target_cpu=0.2, target_gpu=0.7,
    ),
    Case(
        "roi_align_mask", "roi_align",
        "x 1x256x50x68, 128 boxes, 14x14, scale 1/16, sampling -1 (adaptive), aligned",
        {
            "full": dict(x=(1, 256, 50, 68), boxes=128, output_size=14, sampling_ratio=-1,
                         aligned=True, **_FPN),
            "small": dict(x=(1, 32, 50, 68), boxes=16, output_size=14, sampling_ratio=-1,
                          aligned=True, **_FPN),
            "tiny": dict(x=(1, 4, 12, 16), boxes=4, output_size=4, sampling_ratio=-1,
                         aligned=True, **_FPN_TINY),
        },
        target_cpu=0.2, target_gpu=0.7,
    ),
    Case(
        "roi_pool_fpn", "roi_pool",
        "x 1x256x50x68, 512 boxes (as roi_align_fpn), 7x7, scale 1/16",
        {
            "full": dict(x=(1, 256, 50, 68), boxes=512, output_size=7, **_FPN),
            "small": dict(x=(1, 32, 50, 68), boxes=64, output_size=7, **_FPN),
            "tiny": dict(x=(1, 4, 12, 16), boxes=6, output_size=3, **_FPN_TINY),
        },
        target_cpu=0.2, target_gpu=0.7,
    ),
    # --- extra cases: not in BENCHMARKS.md's table, run only when named ---------------------
    Case(
        "dilated_single", "conv2d",
        "x 1x1x1024x1024, w 1x1x3x3, padding 4, dilation 4 (single-channel dilated filter)",
        {
            "full": _conv((1, 1, 1024, 1024), 1, (3, 3), padding=4, dilation=4),
            "small": _conv((1, 1, 128, 128), 1, (3, 3), padding=4, dilation=4),
            "tiny": _conv((1, 1, 16, 16), 1, (3, 3), padding=4, dilation=4),
        },
        target_cpu=None, target_gpu=None, default=False, peers=("torch", "scipy"),
        note="extra case: the peer scipy.ndimage.correlate / cupyx.scipy.ndimage.correlate",
    ),
]

#: name -> Case, in BENCHMARKS.md order (extras last)
CASES = {c.name: c for c in _CASE_LIST}
#: the cases of BENCHMARKS.md (the default of ``python -m fastconv bench``)
DEFAULT_CASES = [c.name for c in _CASE_LIST if c.default]


def get(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; choose from {', '.join(CASES)}") from None


def select(spec: str | None) -> list[Case]:
    """Cases from a comma-separated list (``None``/``""``/``"all"``: the BENCHMARKS.md cases).

    A name may also be an op (``"roi_align"``) meaning every default case of that op.
    """
    if spec is None or spec.strip() in ("", "all"):
        return [CASES[n] for n in DEFAULT_CASES]
    out = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name in OPS and name not in CASES:
            picked = [CASES[n] for n in DEFAULT_CASES if CASES[n].op == name]
        else:
            picked = [get(name)]
        out.extend(c for c in picked if c not in out)
    if not out:
        raise ValueError(f"no case selected by {spec!r}")
    return out


def scipy_filter_args(inp: Inputs):
    """``(image2d, kernel2d)`` for ``scipy.ndimage.correlate`` if this conv2d is a
    single-channel stride-1 'same' filter with an odd (dilated) kernel, else ``None``.

    The dilated kernel is spread out with zeros; ``mode="constant"`` (zero padding)
    with the kernel centred then equals ``conv2d`` with padding ``d (k - 1) / 2``.
    """
    if inp.op != "conv2d":
        return None
    x, w = inp.arrays["input"], inp.arrays["weight"]
    p = inp.params
    if x.shape[:2] != (1, 1) or w.shape[:2] != (1, 1) or p["groups"] != 1:
        return None
    stride, pad, dil = (_pair(p[k]) for k in ("stride", "padding", "dilation"))
    if stride != (1, 1):
        return None
    kh, kw = w.shape[2:]
    span = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1)
    if span[0] % 2 == 0 or span[1] % 2 == 0 or pad != ((span[0] - 1) // 2, (span[1] - 1) // 2):
        return None
    kern = np.zeros(span, dtype=w.dtype)
    kern[:: dil[0], :: dil[1]] = w[0, 0]
    return x[0, 0], kern
