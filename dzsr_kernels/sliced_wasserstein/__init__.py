"""Sliced-Wasserstein loss on feature maps: reference, fused C++ (CPU) / CUDA, Triton."""

from .op import sliced_wasserstein_loss
from .reference import draw_projections

__all__ = ["draw_projections", "sliced_wasserstein_loss"]
