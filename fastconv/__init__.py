"""fastconv: dilated, grouped, transposed and deformable 2-D convolutions, RoIAlign and RoIPool.

Drop-in with ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` and
``torchvision.ops.deform_conv2d`` / ``roi_align`` / ``roi_pool``, on NumPy
(numba CPU kernels), CuPy (CUDA C kernels) and numba device arrays
(numba.cuda kernels). The backend is chosen from the array type; pass
``backend=`` to override. ``fastconv.reference`` is the NumPy float64 oracle.
"""

from ._errors import BackendUnavailableError
from .conv import conv2d, conv_transpose2d
from .deform import deform_conv2d
from .roi import roi_align, roi_pool

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "conv2d",
    "conv_transpose2d",
    "deform_conv2d",
    "roi_align",
    "roi_pool",
    "__version__",
]
