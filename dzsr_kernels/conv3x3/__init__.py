"""3x3 convolution (stride 1, zero padding 1): reference F.conv2d, Winograd F(4x4, 3x3) on the CPU."""

from .op import Conv3x3, conv3x3

__all__ = ["Conv3x3", "conv3x3"]
