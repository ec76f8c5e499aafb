"""Small building blocks shared by the SelfDZSR networks.

Images are NCHW float tensors in [0, 1]; features are NCHW with 64 channels unless stated.

Halos: a *local* stage's output at a pixel depends only on its inputs within its receptive-field
halo (in pixels of its input grid). Each stage computes its halo from its own layers with
``conv_halo``; ``dzsr.infer`` grows every tile by it, which makes tiled inference exact.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from dzsr_kernels import Conv3x3
from dzsr_kernels.conv3x3 import reference as conv3x3_reference

# RGB mean the authors subtract before (and add after) every network (DIV2K mean, range 1).
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with bias and 'same' padding (for stride 1): an ``nn.Conv2d`` whose stride-1
    ungrouped forward runs ``dzsr_kernels.conv3x3`` (Winograd on the CPU; same parameters and state
    dict as ``nn.Conv2d``)."""
    return Conv3x3(c_in, c_out, stride=stride, groups=groups)


def conv_fused(
    conv: nn.Module,
    x: torch.Tensor,
    *,
    residual: torch.Tensor | None = None,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """``act(conv(x) + residual)`` (act: ReLU for slope 0, LeakyReLU for a slope > 0, none for None):
    one pass with the epilogue fused where ``conv`` is a ``Conv3x3`` (``dzsr_kernels.conv3x3``),
    torch's ops after any other convolution (a layer swapped in keeps working)."""
    if isinstance(conv, Conv3x3):
        return conv(x, residual, negative_slope)
    return conv3x3_reference.epilogue(conv(x), residual, negative_slope)


def conv_halo(conv: nn.Conv2d) -> int:
    """Receptive-field halo of a stride-1 'same' convolution: ``dilation * (kernel - 1) / 2`` pixels
    on its larger axis. Raises ValueError for a strided or size-changing convolution, whose output
    pixels tiles cannot cut at the input's pixel grid."""
    reach = [d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation)]
    same = conv.padding == "same" or list(conv.padding) == reach
    if any(s != 1 for s in conv.stride) or any(k % 2 == 0 for k in conv.kernel_size) or not same:
        raise ValueError(
            f"{conv} is not a stride-1 'same' convolution with an odd kernel: it has no pixel halo"
        )
    return max(reach)


def rows_times_filters(
    rows: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``rows @ filters.T + bias`` for rows (M,K) and filters (N,K), both contiguous: (M,N), computed
    as the 1x1 convolution of ``rows`` seen as a channels-last (1,K,1,M) image, whose output is
    (M,N) in memory. Why not ``torch.mm``: on the CPU it runs MKL's sgemm, which takes its AVX2 path
    on AMD CPUs at about half the rate of oneDNN, which runs convolutions (float32 on the
    development machine, 2 threads, 2048³: 150-180 vs 350-410 GFLOP/s)."""
    m, k = rows.shape
    image = rows.view(1, 1, m, k).permute(0, 3, 1, 2)
    out = F.conv2d(image, filters.view(*filters.shape, 1, 1), bias)  # (1,N,1,M) channels-last
    return out.permute(0, 2, 3, 1).view(m, filters.shape[0])


def autocast_off(x: torch.Tensor) -> torch.autocast:
    """A context in which autocast is off on ``x``'s device: the enclosed ops run in their inputs'
    dtypes. The precision-sensitive stages (matching, the deformable convolutions' sampling) use it
    so that a caller's ``torch.autocast`` region only lowers the plain convolutions."""
    return torch.autocast(x.device.type, enabled=False)


def check_image(name: str, x: object, like: torch.Tensor | None = None, size=None) -> None:
    """``x`` must be a float tensor (N,3,H,W), with ``like``'s batch size and spatial ``size``
    (H, W) when given; otherwise ValueError naming ``name``."""
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 4
        or x.shape[1] != 3
        or not x.is_floating_point()
    ):
        got = (
            f"{type(x).__name__} {tuple(x.shape)} {x.dtype}"
            if isinstance(x, torch.Tensor)
            else type(x).__name__
        )
        raise ValueError(f"{name} must be a float tensor (N,3,H,W), got {got}")
    if like is not None and x.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must have batch size {like.shape[0]}, got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{name} must be (N,3,{size[0]},{size[1]}), got {tuple(x.shape)}")


class MeanShift(nn.Module):
    """Per-channel affine x*w + b as a depthwise 1x1 conv (weight (3,1,1,1), bias (3,)).

    ``sign=-1`` subtracts ``RGB_MEAN``, ``sign=+1`` adds it back. The weight and bias are frozen
    parameters (requires_grad False) so that checkpoints and parameter counts match the authors'.
    """

    def __init__(self, sign: int = -1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 1, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(sign * torch.tensor(RGB_MEAN), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N,3,H,W) with ``RGB_MEAN`` subtracted (sign -1) or added (sign +1) per channel."""
        return F.conv2d(x, self.weight, self.bias, groups=3)


def space_to_depth(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(N,C,H,W) -> (N, C*scale², H/scale, W/scale) in the authors' DownBlock channel order.

    Output channel ``(dy*scale + dx)*C + c`` holds ``x[:, c, scale*i+dy, scale*j+dx]``, i.e. the
    sub-pixel offset is the slow index and the colour channel the fast one (``nn.PixelUnshuffle``
    uses the opposite order). H and W must be multiples of ``scale``.
    """
    n, c, h, w = x.shape
    if h % scale or w % scale:
        raise ValueError(f"space_to_depth needs H, W divisible by scale={scale}, got {h}x{w}")
    x = x.reshape(n, c, h // scale, scale, w // scale, scale).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, c * scale * scale, h // scale, w // scale)


class ResidualBlock(nn.Module):
    """x + conv2(relu(conv1(m))) with m = x * (1 + modulation(p)) when a predictor vector p is given.

    p (N,64,1,1) comes from ``Predictor``; modulation is 1x1 convs 64 -> 4 -> ReLU -> 64.
    """

    def __init__(self, channels: int = 64, hidden: int = 4):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.modulation = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
        """x (N,64,H,W) -> (N,64,H,W), modulated by ``p`` (N,64,1,1) when given."""
        m = x if p is None else x * (1 + self.modulation(p))
        return conv_fused(self.conv2, conv_fused(self.conv1, m, negative_slope=0.0), residual=x)

    @property
    def halo(self) -> int:
        """Its two convolutions' halos (the modulation is per pixel)."""
        return conv_halo(self.conv1) + conv_halo(self.conv2)


class Predictor(nn.Module):
    """Global degradation vector from (LR centre, reference) and the fused features.

    lr (N,3,h,w) is bilinearly upsampled (align_corners=True) to ref's size (N,3,H,W); both are
    mean-shifted, concatenated and embedded (3x3 conv 6->64, ReLU); the fused features
    (N,64,H',W') are bilinearly resized to (H,W) and concatenated; then 3x3 conv 128->64 and four
    stride-2 3x3 convs, each followed by ReLU, and a global average: returns (N,64,1,1).

    Stages of ``forward`` (whole-image inference runs ``embed``, a local stage, in tiles):
    ``resized_inputs`` -> ``embed`` (up to the first 3x3 conv 128->64 and its ReLU, halo
    ``embed_halo``) -> ``reduce`` (the strided convs and the average).
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.mean_shift = MeanShift()
        self.head = conv3x3(6, channels)
        self.body = nn.Sequential(
            conv3x3(2 * channels, channels),
            nn.ReLU(),
            *[m for _ in range(4) for m in (conv3x3(channels, channels, stride=2), nn.ReLU())],
        )

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """The degradation vector (N,64,1,1) from ``lr`` (N,3,h,w), ``ref`` (N,3,H,W) and ``fused``
        (N,64,H',W') (class docstring)."""
        return self.reduce(self.embed(*self.resized_inputs(lr, ref, fused)))

    def resized_inputs(self, lr: torch.Tensor, ref: torch.Tensor, fused: torch.Tensor):
        """(lr, ref, fused) with lr and fused bilinearly resized (aligned corners) to ref's (H,W)."""
        size = ref.shape[-2:]
        up_lr = F.interpolate(lr, size=size, mode="bilinear", align_corners=True)
        return up_lr, ref, F.interpolate(fused, size=size, mode="bilinear", align_corners=True)

    def embed(self, up_lr: torch.Tensor, ref: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """(N,64,H,W) from ``resized_inputs``' three maps at one size: the embedding of the mean-shifted
        images concatenated with ``fused``, through the first 3x3 conv 128->64 and its ReLU."""
        images = torch.cat([self.mean_shift(up_lr), self.mean_shift(ref)], 1)
        h = conv_fused(self.head, images, negative_slope=0.0)
        return self.body[:2](torch.cat([h, fused], 1))

    @property
    def embed_halo(self) -> int:
        """Halo of ``embed``: its two 3x3 convs' (the mean shift and the ReLUs are per pixel)."""
        return conv_halo(self.head) + conv_halo(self.body[0])

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """``embed``'s (N,64,H,W) -> (N,64,1,1): four stride-2 3x3 convs with ReLU, global average."""
        return self.body[2:](x).mean((2, 3), keepdim=True)


UPSAMPLE_FACTORS = {2: (2,), 3: (3,), 4: (2, 2)}  # scale -> pixel-shuffle factor of each stage


def upsample_factors(scale: int) -> list[int]:
    """The pixel-shuffle factors of ``PixelShuffleUpsampler(scale)``'s stages."""
    if scale not in UPSAMPLE_FACTORS:
        raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
    return list(UPSAMPLE_FACTORS[scale])


class PixelShuffleUpsampler(nn.Module):
    """Upsample 64-channel features by ``scale`` (2, 3 or 4): per factor-2 (or the single factor-3)
    stage a 3x3 conv 64 -> 64*f² and ``pixel_shuffle(f)``; no activation."""

    def __init__(self, scale: int, channels: int = 64):
        super().__init__()
        self.factors = upsample_factors(scale)
        self.convs = nn.ModuleList(conv3x3(channels, channels * f * f) for f in self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,64,H,W) -> (N,64,sH,sW): each stage's conv, then ``pixel_shuffle``."""
        for f, conv in zip(self.factors, self.convs):
            x = F.pixel_shuffle(conv(x), f)
        return x

    @property
    def reach(self) -> Fraction:
        """Halo in input pixels, exact: each conv's halo in pixels of its stage's grid, which is the
        product of the earlier factors times finer than the input's."""
        reach, grid = Fraction(0), 1
        for f, conv in zip(self.factors, self.convs):
            reach += Fraction(conv_halo(conv), grid)
            grid *= f
        return reach
