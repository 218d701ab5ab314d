"""fastconv.receptive_field: the formulas, brute force through fastconv.conv2d, and errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fastconv.conv import conv2d
from fastconv.receptive import ReceptiveField, receptive_field


def test_dilated_stack_from_the_issue():
    rf = receptive_field([{"kernel_size": 3, "dilation": d} for d in (1, 2, 4)])
    assert [r.size for r in rf] == [3, 7, 15]
    assert [r.jump for r in rf] == [1, 1, 1]
    assert [r.start for r in rf] == [1.0, 3.0, 7.0]  # no padding: the field starts at 0


def test_strided_stack():
    # ResNet stem: 7x7/2 pad 3, then 3x3/2 max-pool pad 1
    rf = receptive_field([dict(kernel_size=7, stride=2, padding=3),
                          dict(kernel_size=3, stride=2, padding=1)])
    assert rf == [ReceptiveField(7, 2, 0.0), ReceptiveField(11, 4, 0.0)]
    size, jump, start = rf[-1]  # a record unpacks like a tuple
    assert rf[-1]._asdict() == {"size": 11, "jump": 4, "start": 0.0}


def test_pairs_and_same_padding():
    rf = receptive_field([dict(kernel_size=(3, 1), padding="same"),
                          dict(kernel_size=(2, 4), stride=(1, 2), dilation=(2, 1))])
    assert rf[0] == ReceptiveField((3, 1), (1, 1), (0.0, 0.0))
    assert rf[1] == ReceptiveField((5, 4), (1, 2), (1.0, 1.5))
    # one pair anywhere makes every record a pair
    assert receptive_field([dict(kernel_size=3), dict(kernel_size=3, stride=(2, 2))])[0].size \
        == (3, 3)
    assert receptive_field([]) == []


def test_objects_with_attributes():
    conv = SimpleNamespace(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(2, 2))
    pool = SimpleNamespace(kernel_size=2, stride=2, padding=0, dilation=1)
    rf = receptive_field([conv, pool])
    assert rf[-1] == ReceptiveField((6, 6), (2, 2), (1.5, 1.5))


STACKS = [
    [dict(kernel_size=3, dilation=1), dict(kernel_size=3, dilation=2),
     dict(kernel_size=3, dilation=4)],
    [dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)), dict(kernel_size=2, stride=2),
     dict(kernel_size=(3, 1), dilation=(2, 3), padding=(2, 0))],
    [dict(kernel_size=4, stride=3, padding=1), dict(kernel_size=(1, 3), dilation=3,
                                                   padding=(0, 3)), dict(kernel_size=2)],
]


@pytest.mark.parametrize("stack", STACKS)
def test_brute_force_through_conv2d(stack):
    """Perturb each input pixel; the outputs that change are the receptive fields."""
    rf = receptive_field(stack)[-1]
    size = np.broadcast_to(rf.size, 2)
    jump = np.broadcast_to(rf.jump, 2)
    start = np.broadcast_to(rf.start, 2)
    h = w = 48

    def forward(x):
        for layer in stack:
            x = conv2d(x, np.ones((1, 1) + tuple(np.broadcast_to(layer["kernel_size"], 2))),
                       None, layer.get("stride", 1), layer.get("padding", 0),
                       layer.get("dilation", 1), backend="reference")
        return x[0, 0]

    base = forward(np.zeros((1, 1, h, w)))
    seen = {}
    for y in range(h):
        for x in range(w):
            img = np.zeros((1, 1, h, w))
            img[0, 0, y, x] = 1.0
            for oy, ox in np.argwhere(forward(img) != base):
                seen.setdefault((oy, ox), []).append((y, x))
    ho, wo = base.shape
    for oy, ox in [(0, 0), (ho // 2, wo // 2), (ho - 1, wo - 1)]:
        pix = np.array(seen[(oy, ox)])
        centre = start + np.array([oy, ox]) * jump
        lo = np.ceil(centre - (size - 1) / 2).astype(int)
        hi = np.floor(centre + (size - 1) / 2).astype(int)
        # the field, cut to the image (dilated kernels may skip pixels inside it)
        assert (pix.min(axis=0) >= lo).all() and (pix.max(axis=0) <= hi).all(), (oy, ox)
        inside = (lo >= 0) & (hi < (h, w))
        np.testing.assert_array_equal(pix.min(axis=0)[inside], lo[inside])
        np.testing.assert_array_equal(pix.max(axis=0)[inside], hi[inside])


BAD = [
    ([{"stride": 2}], ValueError, "needs a kernel_size"),
    ([{"kernel_size": 3, "strides": 2}], ValueError, "unknown key"),
    ([{"kernel_size": 0}], ValueError, "kernel_size must be positive"),
    ([{"kernel_size": 3, "padding": -1}], ValueError, "padding must be non-negative"),
    ([{"kernel_size": 3, "padding": "full"}], ValueError, "padding must be"),
    ([{"kernel_size": 3, "stride": 2, "padding": "same"}], ValueError, "stride 1"),
    ([{"kernel_size": 2.5}], TypeError, "kernel_size must be an int"),
    ([3], TypeError, r"layers\[0\] must be a mapping"),
    ({"kernel_size": 3}, TypeError, "sequence of layers"),
    (5, TypeError, "iterable"),
]


@pytest.mark.parametrize("layers,exc,match", BAD)
def test_bad_input(layers, exc, match):
    with pytest.raises(exc, match=match):
        receptive_field(layers)
