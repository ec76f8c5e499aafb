"""Reference branch of the restoration network (paper §3.4).

1. Matching (no gradient): top-1 3x3 patch correlation between the extractor's query and reference
   features (1/4 resolution), index -> flow -> the 9 shifted copies as an 18-channel offset field
   (C2-Matching trick), upsampled x4 to the image grid (``dzsr_kernels.patch_match``,
   ``match_flow``, ``flow_to_offsets``).
2. Reference encoder on the reference image (same size as the LR, H and W multiples of 4), warped by
   a depthwise 3x3 deformable conv with bias using those offsets.
3. Paste: the space-to-depth of ``paste_ref`` (its HR-resolution footprint, (N,3,s*h,s*w)) is
   embedded by a 3x3 conv and written into the warped features at ``paste_box`` (y0, y1, x0, x1 in
   LR pixels, y1-y0 = h, x1-x0 = w). Each sample is pasted with probability ``paste_prob`` in training
   and always in eval mode.
4. A reference AdaSTN aligns the result to the guide features (never dropped).

Stages, composed by ``ReferenceBranch.forward`` (and run separately by ``dzsr.infer``): ``features``
(steps 1-2 given the offsets: ``encode``, local, halo ``encode_halo``, then ``warp_encoded``, global,
as the warp reads the matched positions anywhere),
``paste_reference`` (step 3, global) and the reference AdaSTN's ``align.estimate`` (local, halo
``align.estimate_halo``) and ``align.transform`` (global).
"""

from __future__ import annotations

import torch
import torch.nn as nn

import dzsr_kernels

from .adastn import AdaSTN
from .blocks import (
    MeanShift,
    autocast_off,
    check_image,
    conv3x3,
    conv_fused,
    conv_halo,
    space_to_depth,
)


def matching_offsets(query_features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
    """Extractor features (N,C,h,w) each -> deformable-conv offsets (N,18,4h,4w) in image pixels."""
    with torch.no_grad():
        _, index = dzsr_kernels.patch_match(query_features, ref_features, patch_size=3)
        flow = dzsr_kernels.match_flow(index, ref_features.shape[-2:])
        return dzsr_kernels.flow_to_offsets(flow, scale=4).to(query_features.dtype)


class FlowWarp(nn.Module):
    """Depthwise 3x3 deformable conv with bias: ``forward(x (N,C,H,W), offsets (N,18,H,W))``,
    offsets in torchvision's interleaved (dy, dx) layout (``dzsr_kernels.deform_conv2d``)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        init = nn.Conv2d(channels, channels, 3, groups=channels)  # PyTorch's default conv init
        self.weight = nn.Parameter(init.weight.detach().clone())
        self.bias = nn.Parameter(init.bias.detach().clone())

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """In the weights' dtype (float32) also inside ``torch.autocast``: ``x`` and the offsets
        are cast to it, so the sampling positions and the bilinear weights are full precision."""
        dtype = self.weight.dtype
        with autocast_off(x):
            return dzsr_kernels.deform_conv2d(
                x.to(dtype), offsets.to(dtype), self.weight, self.bias, groups=x.shape[1]
            )


class ReferenceEncoder(nn.Module):
    """Image (N,3,H,W) -> features (N,64,H,W): mean shift, five 3x3 convs, ReLU after the first four."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.mean_shift = MeanShift()
        self.convs = nn.ModuleList(
            [conv3x3(3, channels)] + [conv3x3(channels, channels) for _ in range(4)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N,64,H,W) of an image (N,3,H,W) (class docstring)."""
        x = self.mean_shift(x)
        for conv in self.convs[:-1]:
            x = conv_fused(conv, x, negative_slope=0.0)
        return self.convs[-1](x)


class PasteHead(nn.Module):
    """HR-resolution reference (N,3,s*h,s*w) -> (N,64,h,w): mean shift, space-to-depth, 3x3 conv."""

    def __init__(self, scale: int, channels: int = 64):
        super().__init__()
        self.scale = scale
        self.mean_shift = MeanShift()
        self.conv = conv3x3(3 * scale * scale, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,64,h,w) from the HR-resolution reference x (N,3,s*h,s*w) (class docstring)."""
        return self.conv(space_to_depth(self.mean_shift(x), self.scale))


def paste_given(paste_ref: torch.Tensor | None, paste_box: torch.Tensor | None) -> bool:
    """Whether a paste is requested: both given (True) or neither (False); one alone is an error."""
    if (paste_ref is None) != (paste_box is None):
        raise ValueError("give both paste_ref and paste_box, or neither")
    return paste_ref is not None


def check_paste_box(paste_box: object, n: int, box_size, lr_size) -> None:
    """``paste_box`` must be an integer tensor (n, 4) of boxes (y0, y1, x0, x1), each of
    ``box_size`` (h, w) and inside an LR of ``lr_size`` (H, W); otherwise ValueError."""
    if (
        not isinstance(paste_box, torch.Tensor)
        or paste_box.shape != (n, 4)
        or paste_box.is_floating_point()
    ):
        got = (
            tuple(paste_box.shape)
            if isinstance(paste_box, torch.Tensor)
            else type(paste_box).__name__
        )
        raise ValueError(
            f"paste_box must be an integer tensor (N={n}, 4) of (y0, y1, x0, x1), got {got}"
        )
    (h, w), (height, width) = box_size, lr_size
    for i, (y0, y1, x0, x1) in enumerate(paste_box.tolist()):
        if (y1 - y0, x1 - x0) != (h, w) or y0 < 0 or x0 < 0 or y1 > height or x1 > width:
            raise ValueError(
                f"paste_box[{i}]=({y0},{y1},{x0},{x1}) must be a {h}x{w} box "
                f"(paste_ref size / scale) inside the {height}x{width} LR"
            )


def check_paste_inputs(paste_ref: object, paste_box: object, scale: int, lr: torch.Tensor) -> None:
    """``paste_ref`` (N,3,s*h,s*w) and ``paste_box`` (N,4), both or neither, for ``lr`` (N,3,H,W):
    each box an h x w box inside the LR."""
    if not paste_given(paste_ref, paste_box):
        return
    check_image("paste_ref", paste_ref, lr)
    n, _, ph, pw = paste_ref.shape
    if ph % scale or pw % scale:
        raise ValueError(
            f"paste_ref height and width must be multiples of scale={scale}, "
            f"got {tuple(paste_ref.shape)}"
        )
    check_paste_box(paste_box, n, (ph // scale, pw // scale), lr.shape[-2:])


def paste(
    features: torch.Tensor, patch: torch.Tensor, boxes: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """Write patch[i] (64,h,w) into features[i] at boxes[i]=(y0,y1,x0,x1) where chosen[i]; differentiable.
    The result is a copy in features' memory format (a channels-last map stays channels-last, so the
    deformable convolution and the convolutions after it keep their channels-last kernels)."""
    check_paste_box(boxes, features.shape[0], patch.shape[-2:], features.shape[-2:])
    out = features.clone()
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        if bool(chosen[i]):
            out[i, :, y0:y1, x0:x1] = patch[i]
    return out


class ReferenceBranch(nn.Module):
    """``forward(ref, offsets, guide_features, paste_ref=None, paste_box=None)`` -> (N,64,H,W);
    the composition of its stages (module docstring)."""

    def __init__(self, scale: int, channels: int = 64, paste_prob: float = 0.3):
        super().__init__()
        if not 0.0 <= paste_prob <= 1.0:
            raise ValueError(f"paste_prob must be in [0, 1], got {paste_prob}")
        self.paste_prob = paste_prob
        self.encoder = ReferenceEncoder(channels)
        self.warp = FlowWarp(channels)
        self.paste_head = PasteHead(scale, channels)
        self.align = AdaSTN(channels, drop_prob=0.0)

    def forward(self, ref, offsets, guide_features, paste_ref=None, paste_box=None):
        """Aligned reference features (N,64,H,W): ``features`` of ``ref`` (N,3,H,W) and ``offsets``
        (N,18,H,W), ``paste_reference`` of ``paste_ref`` at ``paste_box`` when given, then the
        reference AdaSTN against ``guide_features`` (N,64,H,W)."""
        feats = self.paste_reference(self.features(ref, offsets), paste_ref, paste_box)
        return self.align(feats, guide_features)

    def features(self, ref: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Encoded reference (N,3,H,W) warped by the matching offsets (N,18,H,W): (N,64,H,W)."""
        return self.warp_encoded(self.encode(ref), offsets)

    def encode(self, ref: torch.Tensor) -> torch.Tensor:
        """The reference encoder: (N,3,H,W) -> (N,64,H,W); local, halo ``encode_halo``."""
        return self.encoder(ref)

    @property
    def encode_halo(self) -> int:
        """Halo of ``encode``: its 3x3 convs', summed (the mean shift and ReLUs are per pixel)."""
        return sum(conv_halo(conv) for conv in self.encoder.convs)

    def warp_encoded(self, encoded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``encode``'s (N,64,H,W) warped by the matching offsets (N,18,H,W); global (the offsets
        reach anywhere in the reference)."""
        return self.warp(encoded, offsets)

    def paste_reference(
        self,
        feats: torch.Tensor,
        paste_ref: torch.Tensor | None = None,
        paste_box: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``feats`` with the embedded ``paste_ref`` written at ``paste_box`` (module docstring,
        step 3): each sample with probability ``paste_prob`` in training, always in eval mode."""
        if not paste_given(paste_ref, paste_box):
            return feats
        n = feats.shape[0]
        if self.training:
            chosen = torch.rand(n, device=feats.device) < self.paste_prob
        else:
            chosen = torch.ones(n, dtype=torch.bool)
        if not bool(chosen.any()):
            return feats
        return paste(feats, self.paste_head(paste_ref), paste_box, chosen)
