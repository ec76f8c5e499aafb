"""The upsample stage as one convolution, for inference.

The restoration network's last stage (pixel-shuffle upsampler, 3x3 tail conv to RGB, mean shift)
has no activation: it is an affine map from the 64-channel body features to the image, and away
from the image borders a translation-equivariant one with period one LR pixel. So it equals a single
convolution of the LR features, 64 -> 3·s² channels with a (2·halo+1)² kernel, followed by
``pixel_shuffle(s)``: at x4, 2·25·64·48 FLOPs per LR pixel instead of the layers' 2·9·64·256·(1+4)
+ 2·9·64·3·16 (about 1.58 MFLOP), 10x fewer.

Borders: the layers zero-pad each intermediate map (2x and 4x resolution) at the image border,
which the single convolution (zero-padding its LR input only) does not reproduce. Only outputs
within ``ring`` LR pixels of a border read a padded intermediate value, ``ring`` = the layers'
reach beyond their first convolution, rounded up (1 px at x2, x3 and x4); ``upsample_as_one_conv``
recomputes those by the layers on strips of ``ring + halo`` pixels along each border.

The weights come from impulse responses of a float64 copy of the layers (``composed_weights``):
exact to float64 rounding whatever the scale or layer sizes, no hand-derived index algebra.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def composed_weights(
    layers: nn.Module, channels: int, scale: int, halo: int, ring: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (3·s², C, 2·halo+1, 2·halo+1), bias (3·s²,)) of the convolution that, followed by
    ``pixel_shuffle(scale)``, equals ``layers`` ((N,C,H,W) -> (N,3,sH,sW), affine, reach at most
    ``halo`` LR px) at least ``ring`` px from the borders; in the layers' dtype and device.

    One impulse per input channel at the centre of a canvas wide enough that its response stays
    ``ring`` px from the canvas border, plus an empty canvas for the bias; weight[o, c, halo + dy,
    halo + dx] is the response to channel c's impulse at the output sub-pixel o of the LR pixel dy,
    dx before it (``F.conv2d`` correlates)."""
    param = next(layers.parameters())
    exact = copy.deepcopy(layers).to(torch.float64)
    for module in exact.modules():  # the copy runs on impulses: the caller's hooks stay out of it
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    centre = halo + ring
    size = 2 * centre + 1
    canvas = torch.zeros(
        channels + 1, channels, size, size, dtype=torch.float64, device=param.device
    )
    every = torch.arange(channels, device=param.device)
    canvas[every, every, centre, centre] = 1.0
    with torch.no_grad(), torch.autocast(param.device.type, enabled=False):
        response = exact(canvas)  # (C+1, 3, s·size, s·size)
    base, response = response[-1], response[:-1] - response[-1]
    colors, k = base.shape[0], 2 * halo + 1
    weight = canvas.new_empty(colors * scale * scale, channels, k, k)
    for dy in range(-halo, halo + 1):
        for dx in range(-halo, halo + 1):
            y, x = scale * (centre - dy), scale * (centre - dx)
            block = response[:, :, y : y + scale, x : x + scale]  # (C, 3, s, s)
            weight[:, :, halo + dy, halo + dx] = block.permute(1, 2, 3, 0).reshape(-1, channels)
    y = scale * centre
    bias = base[:, y : y + scale, y : y + scale].reshape(-1)
    return weight.to(param.dtype), bias.to(param.dtype)


class ComposedWeights:
    """``composed_weights`` of some layers, composed again whenever one of their parameters differs
    from the copy taken when they were composed (compared in full, about 0.3 M values at x4: an
    in-place edit through ``.data`` leaves no version mark to compare instead)."""

    def __init__(self):
        self.snapshot: list[torch.Tensor] | None = None

    def get(self, layers: nn.Module, channels: int, scale: int, halo: int, ring: int):
        """(weight, bias) of ``composed_weights`` for the layers' current parameters and these
        arguments."""
        params, args = [p.detach() for p in layers.parameters()], (channels, scale, halo, ring)
        if not self._matches(params, args):
            self.weight, self.bias = composed_weights(layers, *args)
            self.snapshot, self.args = [p.clone() for p in params], args
        return self.weight, self.bias

    def _matches(self, params: list[torch.Tensor], args: tuple) -> bool:
        if self.snapshot is None or self.args != args or len(self.snapshot) != len(params):
            return False
        return all(
            s.dtype == p.dtype and s.device == p.device and torch.equal(s, p)
            for s, p in zip(self.snapshot, params)
        )


def upsample_as_one_conv(
    layers: nn.Module,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: int,
    halo: int,
    ring: int,
) -> torch.Tensor:
    """``layers(x)`` for x (N,C,H,W) as ``pixel_shuffle(conv2d(x, weight, bias), scale)`` with
    ``composed_weights``' weight and bias, its outputs within ``ring`` LR px of a border recomputed
    by ``layers`` on border strips (module docstring): (N,3,sH,sW), in x's memory format."""
    out = F.pixel_shuffle(F.conv2d(x, weight, bias, padding=halo), scale)
    height, width = x.shape[-2:]
    reach, s = ring + halo, scale
    out[..., : s * ring, :] = layers(x[..., :reach, :])[..., : s * ring, :]
    start, keep = max(height - reach, 0), max(height - ring, 0)
    out[..., s * keep :, :] = layers(x[..., start:, :])[..., s * (keep - start) :, :]
    out[..., : s * ring] = layers(x[..., :reach])[..., : s * ring]
    start, keep = max(width - reach, 0), max(width - ring, 0)
    out[..., s * keep :] = layers(x[..., start:])[..., s * (keep - start) :]
    return out
