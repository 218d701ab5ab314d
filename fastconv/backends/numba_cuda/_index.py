"""Flat element index -> array coordinates, for the element-wise numba.cuda kernels.

Those kernels run a grid-stride loop over the elements of a C-contiguous output, thread
``t`` taking element ``t`` (coalesced stores), and need its coordinates.  Inlined, so the
kernels compile to what they did with the arithmetic written out.
"""

from __future__ import annotations

from numba import cuda


@cuda.jit(device=True, inline="always")
def unravel3(t, n1, n2):
    """``(i0, i1, i2)`` of flat index ``t`` in a C-ordered ``(*, n1, n2)`` array."""
    i2 = t % n2
    r = t // n2
    return r // n1, r % n1, i2


@cuda.jit(device=True, inline="always")
def unravel4(t, n1, n2, n3):
    """``(i0, i1, i2, i3)`` of flat index ``t`` in a C-ordered ``(*, n1, n2, n3)`` array."""
    i3 = t % n3
    r = t // n3
    i2 = r % n2
    r = r // n2
    return r // n1, r % n1, i2, i3
