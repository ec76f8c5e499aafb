"""dzsr_kernels: fast, tested ops for SelfDZSR.

Each op has a pure-PyTorch ``reference`` (the oracle), ``cpp`` (C++ CPU + CUDA C++ from ``csrc/``)
and ``triton`` implementations; ``available_backends()``, ``use_backend()`` and the
``DZSR_KERNELS_BACKEND`` environment variable choose between them (see ``_backend``).
"""

from ._backend import BackendUnavailableError, available_backends, backend_table, use_backend
from .conv3x3 import Conv3x3, conv3x3
from .deform_conv import AffineDeformConv2d, affine_deform_conv2d, centre_tap_conv2d, deform_conv2d
from .local_sliced_wasserstein import local_sliced_wasserstein_loss
from .patch_match import flow_to_offsets, match_flow, patch_match
from .sliced_wasserstein import sliced_wasserstein_loss

__all__ = [
    "AffineDeformConv2d",
    "BackendUnavailableError",
    "Conv3x3",
    "affine_deform_conv2d",
    "available_backends",
    "backend_table",
    "centre_tap_conv2d",
    "conv3x3",
    "deform_conv2d",
    "local_sliced_wasserstein_loss",
    "sliced_wasserstein_loss",
    "flow_to_offsets",
    "match_flow",
    "patch_match",
    "use_backend",
]
