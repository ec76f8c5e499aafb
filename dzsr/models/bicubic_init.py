"""Bicubic initialisation of the restoration network: training starts from bicubic upsampling.

With the default (random) initialisation the network must first learn to reproduce the image
itself through 16 residual blocks and the pixel-shuffle upsampler, and a short training run ends
below plain bicubic upsampling (colour casts, ringing on flat regions). ``init_bicubic_`` sets a
few weights so that, before any training, ``RestorationNet`` outputs bicubic upsampling of its LR
input (``F.interpolate(..., mode="bicubic", align_corners=False)``) away from the image border;
training then only has to learn the correction. Architecture and parameter count are unchanged
(authors' checkpoints still load).

The linear path, per colour channel c (the other weights keep their random initialisation):
  * head: feature 2c = +(x_c - mean), feature 2c+1 = -(x_c - mean) (3x3 conv, centre tap);
  * the three LR AdaSTNs: zero offset estimators (A = 0, b = 0: every tap reads the centre pixel)
    and depthwise weight 1 at the centre tap for features 2c, 2c+1. Each applies LeakyReLU(0.2),
    so after three of them u = f(x), v = f(-x) with f(t) = t (t > 0), 0.008 t (t < 0), and
    u - v = 1.008 x exactly: the pair carries x through the non-linearities;
  * body tail: zero, so the residual blocks add nothing until training changes it;
  * upsampler and tail: a separable chain of 3x3 convs and pixel shuffles (2 channels between
    stages, 1 after the last, per axis) fitted by least squares in float64, once per scale, to 1-D
    bicubic upsampling of white noise; the fit is exact to rounding at x2, x3 and x4
    (``bicubic_fit_error``), and the 2-D weights are outer products of the 1-D ones (bicubic is
    separable).
Zero padding of the convolutions makes the result differ from bicubic (which replicates the edge)
within a few pixels of the border.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import upsample_factors

LEAKY_SLOPE, N_ALIGN = 0.2, 3
PAIR_GAIN = 1.0 + LEAKY_SLOPE**N_ALIGN  # u - v = PAIR_GAIN * x after the three LR AdaSTNs


def _stage_channels(factors: list[int]) -> list[int]:
    """1-D channels after each upsampling stage: 2 between stages, 1 after the last."""
    return [2] * (len(factors) - 1) + [1]


def _shuffle_1d(y: torch.Tensor, f: int) -> torch.Tensor:
    """(N, C*f, L) -> (N, C, L*f) in ``pixel_shuffle``'s order (channel c*f + phase)."""
    n, cf, length = y.shape
    return y.view(n, cf // f, f, length).transpose(2, 3).reshape(n, cf // f, length * f)


def _chain_1d(x: torch.Tensor, factors: list[int], weights: list[torch.Tensor]) -> torch.Tensor:
    for f, w in zip(factors, weights[:-1]):
        x = _shuffle_1d(F.conv1d(x, w, padding=1), f)
    return F.conv1d(x, weights[-1], padding=1)


def _bicubic_1d(x: torch.Tensor, scale: int) -> torch.Tensor:
    rows = x.unsqueeze(2).expand(-1, -1, 4, -1)
    return F.interpolate(rows, scale_factor=scale, mode="bicubic", align_corners=False)[
        :, :, scale * 2, :
    ]


@functools.cache
def _fit_1d(factors: tuple[int, ...]) -> tuple[list[torch.Tensor], float]:
    """Weights of the 1-D chain (stage convs (K_out*f, K_in, 3), tail (1, K, 3)) fitted to bicubic
    upsampling, and the interior RMS error on unit-variance white noise."""
    scale = math.prod(factors)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 40, generator=gen, dtype=torch.float64)
    target = _bicubic_1d(x, scale)
    channels = _stage_channels(list(factors))
    shapes = [(k * f, k_in, 3) for f, k, k_in in zip(factors, channels, [1] + channels[:-1])] + [
        (1, channels[-1], 3)
    ]
    weights = [
        (0.5 * torch.randn(*s, generator=gen, dtype=torch.float64)).requires_grad_() for s in shapes
    ]
    margin = 3 * scale  # away from the zero padding

    def loss() -> torch.Tensor:
        return (_chain_1d(x, list(factors), weights) - target)[..., margin:-margin].pow(2).mean()

    opt = torch.optim.LBFGS(
        weights,
        max_iter=3000,
        tolerance_grad=1e-15,
        tolerance_change=1e-20,
        history_size=100,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        return [w.detach() for w in weights], float(loss().sqrt())


def bicubic_fit_error(scale: int) -> float:
    """Interior RMS difference (unit-variance input) between the fitted upsampler chain and bicubic."""
    return _fit_1d(tuple(upsample_factors(scale)))[1]


def _separable_2d(w1d: torch.Tensor, f: int) -> torch.Tensor:
    """2-D weights (K*K*f*f, K_in*K_in, 3, 3) of a 1-D stage (K*f, K_in, 3): output (ky, kx, py, px)
    reads input (iy, ix) with the outer product of the two 1-D 3-tap kernels (``pixel_shuffle`` order)."""
    k, k_in = w1d.shape[0] // f, w1d.shape[1]
    a = w1d.reshape(k, f, k_in, 3)
    return torch.einsum("apiu,bqjv->abpqijuv", a, a).reshape(k * k * f * f, k_in * k_in, 3, 3)


def _set_per_colour(conv: nn.Conv2d, block: torch.Tensor) -> None:
    """Colour c's block (O, I, 3, 3) at output rows c*O.., input columns c*I..; zero elsewhere in
    those 3*O rows and zero bias (the other rows keep their initialisation)."""
    o, i = block.shape[:2]
    conv.weight[: 3 * o].zero_()
    conv.bias[: 3 * o].zero_()
    for c in range(3):
        conv.weight[c * o : (c + 1) * o, c * i : (c + 1) * i] = block.to(conv.weight.dtype)


@torch.no_grad()
def init_bicubic_(net: nn.Module) -> nn.Module:
    """Set the bicubic path in a ``RestorationNet`` (module docstring), in place; returns ``net``.
    Needs 64 features (the authors' width) and the 3 LR AdaSTNs."""
    factors = net.upsampler.factors
    weights_1d, _ = _fit_1d(tuple(factors))

    net.head.weight[:6].zero_()
    net.head.bias[:6].zero_()
    for c in range(3):
        net.head.weight[2 * c, c, 1, 1] = 1.0
        net.head.weight[2 * c + 1, c, 1, 1] = -1.0
    for ada in net.align:
        for conv in (ada.offsets.to_matrix, ada.offsets.to_translation):
            conv.weight.zero_()
            conv.bias.zero_()
        ada.deform.weight[:6].zero_()
        ada.deform.weight[:6, 0, 1, 1] = 1.0
    net.body_tail.weight.zero_()
    net.body_tail.bias.zero_()

    # colour c's features after stage s are the K x K products of the 1-D channels; stage 0 reads
    # u - v of the head pair (inputs 2c, 2c+1)
    first = _separable_2d(weights_1d[0], factors[0]).to(net.head.weight.dtype) / PAIR_GAIN
    _set_per_colour(net.upsampler.convs[0], torch.cat([first, -first], 1))
    for f, conv, w1d in zip(factors[1:], net.upsampler.convs[1:], weights_1d[1:-1]):
        _set_per_colour(conv, _separable_2d(w1d, f))
    _set_per_colour(net.tail, _separable_2d(weights_1d[-1], 1))
    return net
