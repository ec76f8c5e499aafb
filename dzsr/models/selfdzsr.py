"""The SelfDZSR restoration network and the top-level model (paper §3, docs/design.md#model).

Conventions: images NCHW float in [0,1]. ``lr`` (N,3,H,W) is the short-focus input; ``ref``
(N,3,H,W) is a reference window of the same pixel size taken from the telephoto image at HR
resolution (what the authors' ``hr_ref`` / ``patch_ref`` is); the output is (N,3,sH,sW), in the
memory format of ``lr`` (NCHW-contiguous, or channels-last if ``lr`` is).

Both networks are written as named stages that their ``forward`` composes and that
``dzsr.infer`` runs tile by tile. A *local* stage (its output at a pixel depends only on its inputs
within a halo) has a ``<stage>_halo`` property computed from its layers (``blocks.conv_halo``), in
LR pixels and for eval mode; a *global* stage (matching, the deformable warps, the paste, the
degradation predictor) has none and runs on the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adastn import AdaSTN
from .blocks import (
    MeanShift,
    PixelShuffleUpsampler,
    Predictor,
    ResidualBlock,
    autocast_off,
    check_image,
    conv3x3,
    conv_fused,
    conv_halo,
)
from .extractor import MatchingExtractor
from .kernel_gen import KernelGen
from .one_conv_upsample import ComposedWeights, upsample_as_one_conv
from .reference_branch import ReferenceBranch, check_paste_inputs, matching_offsets

FEATURE_STRIDE = 4  # the extractor's 1/4 resolution: padded sizes are multiples of it
MIN_LR_SIZE = 12  # 3x3 patches need feature maps of at least 3x3


class RestorationNet(nn.Module):
    """The authors' ``SelfRefSR``: ``forward(lr, guide, ref, offsets, predictor_lr, predictor_ref,
    paste_ref=None, paste_box=None) -> sr``.

    ``guide`` (N,3,H,W) is the pseudo-LR in training and the LR itself at test; ``offsets``
    (N,18,H,W) come from ``matching_offsets``. H and W must be multiples of 4. The three LR
    AdaSTNs use offsets (with per-sample P=0 dropout ``drop_prob``) in training mode and the exact
    1x1 P=0 path in eval mode. ``predictor_lr`` (N,3,h,w) and ``predictor_ref`` (N,3,s·h,s·w) are an
    LR crop and the reference covering the same scene part, for the degradation predictor.

    Stages, in ``forward``'s order: ``lr_features`` (local), ``align_lr`` (local in eval mode), the
    ``reference`` branch (``ReferenceBranch``), ``fuse`` (local), the ``predictor`` (global: one
    (N,64,1,1) vector), ``body`` (local) and ``upsample`` (local, output ``scale`` x larger).
    """

    def __init__(
        self,
        scale: int = 4,
        drop_prob: float = 0.3,
        paste_prob: float = 0.3,
        channels: int = 64,
        n_blocks: int = 16,
    ):
        super().__init__()
        self.scale = scale
        self.head_mean = MeanShift(-1)
        self.head = conv3x3(3, channels)
        self.align = nn.ModuleList(AdaSTN(channels, drop_prob) for _ in range(3))
        self.reference = ReferenceBranch(scale, channels, paste_prob)
        self.fusion = conv3x3(2 * channels, channels)
        self.predictor = Predictor(channels)
        self.blocks = nn.ModuleList(ResidualBlock(channels) for _ in range(n_blocks))
        self.body_tail = conv3x3(channels, channels)
        self.upsampler = PixelShuffleUpsampler(scale, channels)
        self.tail = conv3x3(channels, 3)
        self.tail_mean = MeanShift(+1)
        self._one_conv = ComposedWeights()  # inference's upsample weights (not in the state dict)

    def forward(
        self, lr, guide, ref, offsets, predictor_lr, predictor_ref, paste_ref=None, paste_box=None
    ):
        """sr (N,3,sH,sW) in ``lr``'s memory format: the stages in order (class docstring)."""
        h = self.lr_features(lr)
        h_guide = h if guide is lr else self.lr_features(guide)
        h = self.align_lr(h, h_guide)
        r = self.reference(ref, offsets, h_guide, paste_ref, paste_box)
        fused = self.fuse(h, r)
        p = self.predictor(predictor_lr, predictor_ref, fused)
        sr = self.upsample(self.body(fused, h, p))
        return sr.contiguous(memory_format=memory_format_of(lr))

    def lr_features(self, lr: torch.Tensor) -> torch.Tensor:
        """Head features (N,64,H,W) of an image (N,3,H,W): mean shift and a 3x3 conv."""
        return self.head(self.head_mean(lr))

    @property
    def lr_features_halo(self) -> int:
        """Halo of ``lr_features``: its 3x3 conv's (the mean shift is per pixel)."""
        return conv_halo(self.head)

    def align_lr(self, h: torch.Tensor, guide_features: torch.Tensor) -> torch.Tensor:
        """The three LR AdaSTNs on the head features (N,64,H,W): with offsets estimated against
        ``guide_features`` in training mode, the per-pixel P=0 path in eval mode."""
        for ada in self.align:
            h = ada(h, guide_features, use_offsets=self.training)
        return h

    @property
    def align_lr_halo(self) -> int:
        """0: in eval mode every AdaSTN runs its P=0 path, a 1x1 conv (``AdaSTN.transform``)."""
        return 0

    def fuse(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Aligned LR and reference features (N,64,H,W) each -> fused (N,64,H,W): 3x3 conv on their
        concatenation, LeakyReLU(0.1)."""
        return conv_fused(self.fusion, torch.cat([h, r], 1), negative_slope=0.1)

    @property
    def fuse_halo(self) -> int:
        """Halo of ``fuse``: its 3x3 conv's."""
        return conv_halo(self.fusion)

    def body(self, fused: torch.Tensor, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Residual blocks modulated by the predictor's ``p`` (N,64,1,1), body tail conv, plus the
        aligned LR features ``h``: (N,64,H,W), channels-last (faster plain convs: oneDNN, cuDNN)."""
        res = fused.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            res = block(res, p)
        return conv_fused(self.body_tail, res, residual=h)

    @property
    def body_halo(self) -> int:
        """Halo of ``body``: the residual blocks' and the tail conv's, summed."""
        return sum(block.halo for block in self.blocks) + conv_halo(self.body_tail)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Body features (N,64,H,W) -> image (N,3,sH,sW): pixel-shuffle upsampler, 3x3 tail conv,
        mean shift back. Without autograd (inference) computed as the one equal convolution and
        pixel shuffle (``one_conv_upsample``; 10x fewer FLOPs at x4), the outputs next to the borders
        by the layers; with autograd, and in an exported graph, by the layers."""
        layers = nn.Sequential(self.upsampler, self.tail, self.tail_mean)  # not registered
        if torch.is_grad_enabled() or torch.compiler.is_exporting():
            return layers(x)
        first = self.upsampler.convs[0]
        halo, ring = self.upsample_halo, math.ceil(self._upsample_reach - conv_halo(first))
        weight, bias = self._one_conv.get(layers, first.in_channels, self.scale, halo, ring)
        return upsample_as_one_conv(layers, x, weight, bias, self.scale, halo, ring)

    @property
    def _upsample_reach(self) -> Fraction:
        """The upsample layers' reach in LR px: the upsampler's plus the tail conv's halo at HR."""
        return self.upsampler.reach + Fraction(conv_halo(self.tail), self.scale)

    @property
    def upsample_halo(self) -> int:
        """In LR pixels: the upsampler's reach plus the tail conv's halo at HR (1/scale LR px
        each), rounded up."""
        return math.ceil(self._upsample_reach)


@dataclass
class SelfDZSROutput:
    """``sr`` (N,3,sH,sW); in training also ``degraded`` (KernelGen's output, (N,3,H,W), with grad),
    ``kernels`` (the 7x7/5x5/3x3 weights for the centroid loss) and ``pseudo_lr`` (detached)."""

    sr: torch.Tensor
    degraded: torch.Tensor | None = None
    kernels: list[torch.Tensor] | None = None
    pseudo_lr: torch.Tensor | None = None


def pad_to_feature_stride(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) padded bottom and right by replication to multiples of ``FEATURE_STRIDE``."""
    ph, pw = -x.shape[-2] % FEATURE_STRIDE, -x.shape[-1] % FEATURE_STRIDE
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if ``x`` (N,C,H,W) is stored so (and not also NCHW-contiguous),
    else ``torch.contiguous_format``."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class SelfDZSR(nn.Module):
    """KernelGen + frozen matching extractor + restoration network, for scale 2, 3 or 4.

    ``forward(lr, ref, *, paste_ref=None, paste_box=None, predictor_lr=None, predictor_ref=None,
    gt=None, noise=None) -> SelfDZSROutput``

    - lr, ref: (N,3,H,W), any H, W >= 12 (padded bottom/right by replication to multiples of 4
      internally, output cropped back to (N,3,sH,sW)).
    - paste_ref (N,3,s·h,s·w) with paste_box (N,4) int (y0,y1,x0,x1), y1-y0=h, x1-x0=w: the
      reference's footprint in the LR; pasted with probability ``paste_prob`` in training, always in eval.
    - predictor_lr / predictor_ref: default to ``lr`` cropped at ``paste_box`` and ``paste_ref`` (as in
      the authors' training); without a paste box both must be given.
    - gt (N,3,sH,sW) and noise (N,3,H,W) (the data pipeline's degraded-minus-bicubic GT): when given,
      KernelGen degrades the GT and the guide is the pseudo-LR clamp(degraded.detach() + noise, 0, 1)
      (training); otherwise the guide is the LR (test).

    With a ``dzsr.data.TrainPatches`` batch ``b`` (the authors' training inputs):
    ``model(b["lr"], b["ref"], paste_ref=b["ref"], paste_box=b["ref_box"], gt=b["gt"], noise=b["noise"])``
    (``predictor_lr`` then defaults to ``b["lr_ref"]``). At test, as the authors' central tile: ``lr`` and
    a same-size reference window ``ref``, ``paste_ref`` the telephoto image covering ``paste_box``,
    ``predictor_lr`` the LR crop under it and ``predictor_ref`` the telephoto image.

    Stages of ``forward``: ``check_inputs``, ``predictor_inputs``, (in training) ``kernel_gen``,
    ``pad_to_feature_stride``, ``match`` (global) and the ``restoration`` network's stages;
    ``sr`` is cropped back and returned in ``lr``'s memory format.
    """

    def __init__(self, scale: int = 4, drop_prob: float = 0.3, paste_prob: float = 0.3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        self.scale = scale
        self.kernel_gen = KernelGen(scale)
        self.extractor = MatchingExtractor()
        self.restoration = RestorationNet(scale, drop_prob, paste_prob)

    def forward(
        self,
        lr,
        ref,
        *,
        paste_ref=None,
        paste_box=None,
        predictor_lr=None,
        predictor_ref=None,
        gt=None,
        noise=None,
    ) -> SelfDZSROutput:
        """``SelfDZSROutput`` for ``lr`` and ``ref`` (N,3,H,W) (arguments in the class docstring):
        ``sr`` (N,3,sH,sW) in ``lr``'s memory format; ``degraded``, ``kernels`` and ``pseudo_lr``
        too when ``gt`` and ``noise`` are given."""
        s = self.scale
        self.check_inputs(lr, ref, paste_ref=paste_ref, paste_box=paste_box, gt=gt, noise=noise)
        predictor_lr, predictor_ref = self.predictor_inputs(
            lr, paste_ref, paste_box, predictor_lr, predictor_ref
        )
        out = SelfDZSROutput(sr=lr)
        guide = lr
        if gt is not None:
            out.degraded, out.kernels = self.kernel_gen(gt, lr)
            guide = out.pseudo_lr = (out.degraded.detach() + noise).clamp(0, 1)
        lr_p, guide_p, ref_p = (pad_to_feature_stride(t) for t in (lr, guide, ref))
        if guide is lr:
            guide_p = lr_p
        offsets = self.match(guide_p, ref_p)
        sr = self.restoration(
            lr_p, guide_p, ref_p, offsets, predictor_lr, predictor_ref, paste_ref, paste_box
        )
        height, width = lr.shape[-2:]
        out.sr = sr[..., : s * height, : s * width].contiguous(memory_format=memory_format_of(lr))
        return out

    def check_inputs(self, lr, ref, *, paste_ref=None, paste_box=None, gt=None, noise=None) -> None:
        """ValueError naming the first of ``forward``'s image arguments that breaks its rules."""
        check_image("lr", lr)
        height, width = lr.shape[-2:]
        if height < MIN_LR_SIZE or width < MIN_LR_SIZE:
            raise ValueError(
                f"lr must be at least {MIN_LR_SIZE}x{MIN_LR_SIZE}, got {height}x{width}"
            )
        check_image("ref", ref, lr, (height, width))
        if (gt is None) != (noise is None):
            raise ValueError("give both gt and noise (training with a pseudo-LR), or neither")
        if gt is not None:
            check_image("gt", gt, lr, (self.scale * height, self.scale * width))
            check_image("noise", noise, lr, (height, width))
        check_paste_inputs(paste_ref, paste_box, self.scale, lr)

    def predictor_inputs(self, lr, paste_ref, paste_box, predictor_lr=None, predictor_ref=None):
        """The degradation predictor's (LR crop, reference) pair: ``predictor_lr`` defaults to
        ``lr`` cropped at ``paste_box``, ``predictor_ref`` to ``paste_ref`` (class docstring)."""
        if predictor_ref is None:
            predictor_ref = paste_ref
        if predictor_lr is None and paste_box is not None:
            boxes = paste_box.tolist()
            predictor_lr = torch.stack(
                [lr[i, :, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(boxes)]
            )
        if predictor_lr is None or predictor_ref is None:
            raise ValueError(
                "give predictor_lr and predictor_ref (an LR crop and the reference of the same "
                "scene part), or paste_ref and paste_box from which they default"
            )
        check_image("predictor_lr", predictor_lr, lr)
        check_image("predictor_ref", predictor_ref, lr)
        return predictor_lr, predictor_ref

    def match(self, guide: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Matching offsets (N,18,H,W) of the reference onto the guide, both (N,3,H,W) padded to
        multiples of ``FEATURE_STRIDE`` (``pad_to_feature_stride``): global, no gradient. Runs in
        the inputs' dtype (float32) also inside ``torch.autocast``: the top-1 patch choice is an
        argmax over correlations that a bfloat16 extractor would reorder where they are close."""
        with autocast_off(guide):
            return matching_offsets(*self.extractor(guide, ref))
