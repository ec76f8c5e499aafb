"""Frozen matching feature extractor (the authors' distilled ``ContrasExtractorSep``).

Two separate VGG16 trunks (conv1_1 .. conv3_1 with both max-pools removed, so full resolution;
the output is conv3_1 before its ReLU) for the query (LR or pseudo-LR) and the reference. Input
images in [0,1] are ImageNet-normalised; the 256-channel features are bilinearly resized by 1/4
(align_corners=True, size floor(H/4) x floor(W/4)).

conv3_1 is linear and the resize takes each output from at most 2x2 of its pixels with weights
summing to one, so ``resize(conv3_1(x))`` equals conv3_1 applied to ``x`` resized at each of its
nine taps' shifted sample points (``conv3x3_resized``): the largest convolution of the trunk runs
on 1/16 of the pixels instead of all of them (mathematically equal; float32 rounding differs, by
about 1e-6 relative, as any change of convolution kernel does).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import conv3x3, conv_fused, rows_times_filters

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRUNK = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
)
RESIZE = 4  # the features are 1/RESIZE of the image grid
BAND_ROWS = 32  # output rows per band of VGGTrunk.forward (bounds its buffers; halo rows ~7%)


def aligned_linear_taps(size_in: int, size_out: int, like: torch.Tensor):
    """Source indices and weights of a 1-D linear resize with aligned corners, placed as PyTorch's
    CPU ``upsample_bilinear2d`` places them (scale (in-1)/(out-1), index floor(scale·i) clamped,
    weight ``scale·i - index``, in float64 for float64 ``like``, else float32): (i0, i1, w1) each
    (size_out,) on ``like``'s device, w1 in its dtype; the output at i is (1 - w1[i])·x[i0[i]] +
    w1[i]·x[i1[i]]. Tensor arithmetic on the sizes, so that an exported graph keeps them free."""
    opmath = torch.float64 if like.dtype == torch.float64 else torch.float32
    points = torch.arange(size_out, device=like.device)
    scale = torch.full((), size_in - 1, dtype=opmath, device=like.device)
    scale = scale / max(size_out - 1, 1) * (size_out > 1)
    src = scale * points.to(opmath)
    i0 = src.floor().long().clamp(max=size_in - 1)
    w1 = (src - i0).clamp(0, 1)
    return i0, i0 + (i0 < size_in - 1).long(), w1.to(like.dtype)


class _ShiftedTaps:
    """One axis of ``conv3x3_resized``: for each output point (``aligned_linear_taps``) its two
    sources shifted by each tap offset -1, 0, 1, ordered (point, tap); a shifted source outside
    [0, size) reads zero (the convolution's padding)."""

    def __init__(self, size_in: int, size_out: int, like: torch.Tensor):
        i0, i1, self.w1 = aligned_linear_taps(size_in, size_out, like)
        shifts = torch.arange(-1, 2, device=like.device)
        self.index, self.inside = [], []
        for i in (i0, i1):
            index = (i[:, None] + shifts).flatten()
            self.index.append(index.clamp(0, size_in - 1))
            self.inside.append((index >= 0) & (index < size_in))

    def span(self, start: int, stop: int) -> tuple[int, int]:
        """The sources [lo, hi) that output points ``start:stop`` read (Python ints)."""
        taps = slice(3 * start, 3 * stop)
        lo = min(int(index[taps].min()) for index in self.index)
        return lo, max(int(index[taps].max()) for index in self.index) + 1

    def resize(
        self, t: torch.Tensor, dim: int, start: int, stop: int, first: int = 0
    ) -> torch.Tensor:
        """``t``, which holds sources ``first`` onwards along ``dim``, resized along ``dim`` at the
        shifted sources of output points ``start:stop``: that axis becomes (point, tap), 3 x
        (stop - start) long."""
        taps = slice(3 * start, 3 * stop)
        trailing = (1,) * (t.dim() - dim - 1)
        ends = [
            torch.where(
                inside[taps].view(-1, *trailing), t.index_select(dim, index[taps] - first), 0
            )
            for index, inside in zip(self.index, self.inside)
        ]
        weight = self.w1[start:stop].repeat_interleave(3).view(-1, *trailing)
        return torch.lerp(*ends, weight)


def conv3x3_resized(
    conv: nn.Conv2d,
    x: torch.Tensor,
    rows: _ShiftedTaps,
    cols: _ShiftedTaps,
    band: tuple[int, int],
    first: int,
) -> torch.Tensor:
    """Output rows ``band`` = (start, stop) of ``F.interpolate(conv(X), mode="bilinear",
    align_corners=True)`` for a 3x3, stride 1, padding 1 convolution of a map X, computed at the
    sample points only (``rows`` and ``cols``: the resize's taps of X's height and width): each
    tap's input (zero outside X) is resized at the points shifted by the tap (rows, then columns, by
    contiguous row and pixel gathers and a lerp), and the nine resized maps go through the
    convolution's weights as one product (``rows_times_filters``). x (N,C,h,W) holds X's rows
    ``first`` .. ``first + h - 1``, at least those the band reads (``rows.span``); channels-last for
    speed. Returns (N, stop - start, width, C') (NHWC) in x's dtype."""
    n, c, _, _ = x.shape
    start, stop = band
    c_out, width = conv.out_channels, cols.w1.shape[0]
    # (C', C, ky, kx) -> (C', ky·kx·C), the order of the gathered taps below
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_out, 9 * c).to(x.dtype)
    pixels = x.permute(0, 2, 3, 1)  # (N,h,W,C)
    taps = cols.resize(rows.resize(pixels, 1, start, stop, first), 2, 0, width)
    # (N, k·ky, width·kx, C) -> (N·k·width, ky·kx·C) for the k = stop - start rows
    taps = taps.view(n, stop - start, 3, width, 3 * c).transpose(2, 3).reshape(-1, 9 * c)
    out = rows_times_filters(taps, weight, conv.bias.to(x.dtype))
    return out.view(n, stop - start, width, c_out)


class VGGTrunk(nn.Module):
    """(N,3,H,W) in [0,1] -> (N,256,floor(H/4),floor(W/4))."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for name, c_in, c_out in _TRUNK:
            self.add_module(name, conv3x3(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised x (N,3,H,W) through conv1_1 .. conv3_1 (ReLU after all but conv3_1),
        bilinearly resized by 1/4 (aligned corners): (N,256,floor(H/4),floor(W/4)), channels-last.

        In bands of ``BAND_ROWS`` output rows (one band in an exported graph, where a loop would
        fix the height): conv1_1 .. conv2_2 run on the image rows the band's conv3_1 taps read plus
        a halo of one row per convolution, so that those rows are exact, and conv3_1 and the resize
        run together at the sample points (``conv3x3_resized``, module docstring). Peak memory is
        then a band's, not four full-resolution maps of up to 128 channels (on the CPU machine, LR
        687x1111: 1.9 GiB added by two whole-image trunks). The trunk runs channels-last whatever
        x's layout: oneDNN then convolves the maps in place of reordering each one to its blocked
        format and back."""
        height_in, width_in = x.shape[-2:]
        height, width = height_in // RESIZE, width_in // RESIZE
        rows, cols = _ShiftedTaps(height_in, height, x), _ShiftedTaps(width_in, width, x)
        halo = len(_TRUNK) - 1  # conv1_1 .. conv2_2
        if torch.compiler.is_exporting():
            bands = [((0, height), 0, height_in)]
        else:
            bands = []
            for start in range(0, height, BAND_ROWS):
                band = (start, min(start + BAND_ROWS, height))
                lo, hi = rows.span(*band)
                bands.append((band, max(lo - halo, 0), min(hi + halo, height_in)))
        out = []
        for band, lo, hi in bands:
            y = ((x[..., lo:hi, :] - self.mean) / self.std).contiguous(
                memory_format=torch.channels_last
            )
            for name, _, _ in _TRUNK[:-1]:
                y = conv_fused(getattr(self, name), y, negative_slope=0.0)
            out.append(conv3x3_resized(self.conv3_1, y, rows, cols, band, lo))
        return torch.cat(out, 1).permute(0, 3, 1, 2)


class MatchingExtractor(nn.Module):
    """``forward(query, ref) -> (query_features, ref_features)``, each (N,256,H/4,W/4).

    Frozen: its parameters never require grad and ``train()`` keeps it in eval mode.
    """

    def __init__(self):
        super().__init__()
        self.query_trunk = VGGTrunk()
        self.ref_trunk = VGGTrunk()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> MatchingExtractor:
        """Always eval: the extractor is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, query: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query_features, ref_features) of ``query`` and ``ref`` (N,3,H,W) in [0,1], each through
        its own trunk: (N,256,floor(H/4),floor(W/4)) each; no gradient."""
        return self.query_trunk(query), self.ref_trunk(ref)
