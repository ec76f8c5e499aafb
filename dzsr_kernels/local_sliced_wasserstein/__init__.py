"""Local sliced-Wasserstein (LOSW) loss of SelfDZSR++ on feature maps: reference, fused C++ CPU."""

from .op import local_sliced_wasserstein_loss

__all__ = ["local_sliced_wasserstein_loss"]
