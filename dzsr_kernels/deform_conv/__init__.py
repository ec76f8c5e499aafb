"""Deformable convolution (AdaSTN affine offsets and general offsets): reference, C++/CUDA, Triton."""

from .op import AffineDeformConv2d, affine_deform_conv2d, centre_tap_conv2d, deform_conv2d

__all__ = ["AffineDeformConv2d", "affine_deform_conv2d", "centre_tap_conv2d", "deform_conv2d"]
