"""fastconv: dilated, grouped, transposed and deformable 2-D convolutions, RoIAlign and RoIPool.

Drop-in with ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` and
``torchvision.ops.deform_conv2d`` / ``roi_align`` / ``roi_pool``, on NumPy
(numba CPU kernels), CuPy (CUDA C kernels) and numba device arrays
(numba.cuda kernels). The backend is chosen from the array type; pass
``backend=`` to override. ``fastconv.reference`` is the NumPy float64 oracle.

Also: ``upsample`` (PyTorch's ``interpolate``, nearest/bilinear), ``bilinear_kernel``
(FCN weights for ``conv_transpose2d``), ``receptive_field`` and ``fastconv.image``
(scikit-image-style pyramids, dilated ``correlate``, à trous wavelets, flow warping
and region crops). ``set_autotune`` lets the cupy backend pick its kernels per problem by
timing them, like ``torch.backends.cudnn.benchmark``.
"""

from ._autotune import set_autotune
from ._errors import BackendUnavailableError
from .conv import conv2d, conv_transpose2d
from .deform import deform_conv2d
from .roi import roi_align, roi_pool
from . import image, reference
from .receptive import ReceptiveField, receptive_field
from .upsample import bilinear_kernel, upsample

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ReceptiveField",
    "bilinear_kernel",
    "image",
    "receptive_field",
    "reference",
    "upsample",
    "conv2d",
    "conv_transpose2d",
    "deform_conv2d",
    "roi_align",
    "roi_pool",
    "set_autotune",
    "__version__",
]
