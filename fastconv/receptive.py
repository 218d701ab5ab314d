"""``receptive_field``: size, jump and start of the receptive field through a stack of layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from . import _args

__all__ = ["ReceptiveField", "receptive_field"]

_KEYS = ("kernel_size", "stride", "padding", "dilation")
_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1}


class ReceptiveField(NamedTuple):
    """The receptive field of one output pixel after a layer, in input pixels.

    Each field is a number when every layer was given with numbers, else an
    ``(along H, along W)`` pair.
    """

    #: extent (pixels) of the input region that one output pixel sees
    size: int | tuple[int, int]
    #: distance (input pixels) between neighbouring output pixels: the product of the strides
    jump: int | tuple[int, int]
    #: input coordinate of the centre of output pixel 0's receptive field
    #: (pixel centres at integers; negative when padding reaches beyond the image)
    start: float | tuple[float, float]


def _layer_value(layer, key, index):
    if isinstance(layer, Mapping):
        return layer.get(key, _DEFAULTS.get(key))
    return getattr(layer, key, _DEFAULTS.get(key))


def receptive_field(layers) -> list[ReceptiveField]:
    """Receptive field after each layer of a stack of convolutions / poolings.

    For a layer with kernel ``k``, stride ``s``, top/left padding ``p`` and
    dilation ``d`` (effective kernel ``K = d*(k - 1) + 1``), starting from
    ``size = 1, jump = 1, start = 0`` (the input pixels)::

        size  += (K - 1) * jump
        start += ((K - 1) / 2 - p) * jump
        jump  *= s

    Parameters
    ----------
    layers : iterable of mappings (or objects with these attributes)
        ``kernel_size`` (required), ``stride=1``, ``padding=0``, ``dilation=1``:
        ints or ``(H, W)`` pairs; ``padding`` may be ``"same"`` (total
        ``d*(k - 1)``, the odd pixel at the end, as :func:`fastconv.conv2d`)
        or ``"valid"``.  PyTorch's ``Conv2d`` / ``MaxPool2d`` modules work too.

    Returns
    -------
    list of ReceptiveField
        One ``(size, jump, start)`` record per layer.  Numbers when every layer
        used numbers, ``(H, W)`` pairs as soon as one layer used a pair.

    Raises
    ------
    ValueError
        A missing ``kernel_size``, an unknown key, non-positive sizes, negative padding.
    TypeError
        A layer that is neither a mapping nor has a ``kernel_size`` attribute,
        non-integer values.

    Examples
    --------
    >>> from fastconv import receptive_field
    >>> [r.size for r in receptive_field([{"kernel_size": 3, "dilation": d} for d in (1, 2, 4)])]
    [3, 7, 15]
    >>> receptive_field([{"kernel_size": 7, "stride": 2, "padding": 3},
    ...                  {"kernel_size": 3, "stride": 2, "padding": 1}])[-1]
    ReceptiveField(size=11, jump=4, start=0.0)
    """
    if isinstance(layers, (Mapping, str, bytes)):
        raise TypeError("layers must be a sequence of layers (mappings), not a single "
                        f"{type(layers).__name__}")
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"layers must be an iterable of mappings, got {layers!r}") from None

    scalar = True
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    records = []
    for n, layer in enumerate(layers):
        label = f"layers[{n}]"
        if isinstance(layer, Mapping):
            unknown = sorted(set(layer) - set(_KEYS), key=str)
            if unknown:
                raise ValueError(f"{label} has unknown key(s) {unknown}; expected {_KEYS}")
            if "kernel_size" not in layer:
                raise ValueError(f"{label} needs a kernel_size, got {dict(layer)!r}")
        elif not hasattr(layer, "kernel_size"):
            raise TypeError(
                f"{label} must be a mapping with kernel_size/stride/padding/dilation, "
                f"got {layer!r}"
            )
        raw = {key: _layer_value(layer, key, n) for key in _KEYS}
        for key in _KEYS:
            if isinstance(raw[key], (tuple, list)) or hasattr(raw[key], "shape"):
                scalar = False
        k = _args.positive_pair(raw["kernel_size"], f"{label} kernel_size")
        s = _args.positive_pair(raw["stride"], f"{label} stride")
        d = _args.positive_pair(raw["dilation"], f"{label} dilation")
        pad = raw["padding"]
        if isinstance(pad, str):
            if pad == "valid":
                p = (0, 0)
            elif pad == "same":
                if s != (1, 1):
                    raise ValueError(f"{label} padding='same' needs stride 1, got stride={s}")
                p = tuple((d[a] * (k[a] - 1)) // 2 for a in range(2))
            else:
                raise ValueError(f"{label} padding must be an int, a pair, 'same' or 'valid', "
                                 f"got {pad!r}")
        else:
            p = _args.nonnegative_pair(pad, f"{label} padding")
        for a in range(2):
            eff = d[a] * (k[a] - 1) + 1
            size[a] += (eff - 1) * jump[a]
            start[a] += ((eff - 1) / 2 - p[a]) * jump[a]
            jump[a] *= s[a]
        records.append((tuple(size), tuple(jump), tuple(start)))

    if scalar:
        return [ReceptiveField(r[0][0], r[1][0], r[2][0]) for r in records]
    return [ReceptiveField(*r) for r in records]
