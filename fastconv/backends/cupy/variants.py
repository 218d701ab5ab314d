"""The cupy backend's optional kernel paths: the module settings that switch them, in one place.

Each is implemented and tested (CPU emulator, NVRTC) and stays at its default until a
GPU run of ``bench/ab_cupy_variants.py`` shows that another value pays.  With
``fastconv.set_autotune(True)`` the backend instead times the arms of
:data:`.autotune.ARMS` (combinations of these settings) per problem and keeps the fastest:

============================  ========  =====================================================
setting                       default   what the other values do
============================  ========  =====================================================
``conv.SPLIT_K``              1         None: split the implicit GEMMs' reductions where their
                                        tiles leave the GPU short of blocks; n: n slices
``conv.TRANSPOSED_GEMM``      False     conv_transpose2d as one implicit GEMM per output phase
``conv.GEMM_VEC``             False     True: the implicit GEMMs with vector register tiles
                                        (128-bit shared-memory loads, 128-row tiles)
``conv.DEPTHWISE_TILED``      True      False: depthwise conv2d without the shared-memory tile
``conv.DEPTHWISE_LOADS``      1         4: the depthwise tile loaded with 4 loads in flight
``deform.DEFORM_FUSED``       False     deform_conv2d in one kernel (sampling inside the GEMM)
``roi.ROI_BOX_GRID``          False     RoI kernels with the boxes on grid y
``roi.ROI_CB``                None      1, 4 or 8 channels per thread instead of by channel count
============================  ========  =====================================================
"""

from __future__ import annotations

import contextlib

from . import conv, deform, roi

#: setting -> the module that holds it
OWNER = {"SPLIT_K": conv, "TRANSPOSED_GEMM": conv, "GEMM_VEC": conv, "DEPTHWISE_TILED": conv,
         "DEPTHWISE_LOADS": conv, "DEFORM_FUSED": deform, "ROI_BOX_GRID": roi, "ROI_CB": roi}


def current() -> dict:
    """Every setting's present value."""
    return {name: getattr(module, name) for name, module in OWNER.items()}


def apply(settings: dict) -> None:
    """Set each named setting (``KeyError`` for an unknown name)."""
    for name, value in settings.items():
        setattr(OWNER[name], name, value)


@contextlib.contextmanager
def forced(settings: dict):
    """The settings applied inside the ``with`` block, every setting restored after it."""
    before = current()
    apply(settings)
    try:
        yield
    finally:
        apply(before)
