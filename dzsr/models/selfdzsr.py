"""The SelfDZSR restoration network and the top-level model (paper §3, SPEC §2).

Conventions: images NCHW float in [0,1]. ``lr`` (N,3,H,W) is the short-focus input; ``ref``
(N,3,H,W) is a reference window of the same pixel size taken from the telephoto image at HR
resolution (what the authors' ``hr_ref`` / ``patch_ref`` is); the output is (N,3,sH,sW).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adastn import AdaSTN
from .blocks import MeanShift, PixelShuffleUpsampler, Predictor, ResidualBlock, conv3x3
from .extractor import MatchingExtractor
from .kernel_gen import KernelGen
from .reference_branch import ReferenceBranch, matching_offsets

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
    """

    def __init__(self, scale: int = 4, drop_prob: float = 0.3, paste_prob: float = 0.3, channels: int = 64,
                 n_blocks: int = 16):
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

    def forward(self, lr, guide, ref, offsets, predictor_lr, predictor_ref, paste_ref=None, paste_box=None):
        h = self.head(self.head_mean(lr))
        h_guide = h if guide is lr else self.head(self.head_mean(guide))
        for ada in self.align:
            h = ada(h, h_guide, use_offsets=self.training)
        r = self.reference(ref, offsets, h_guide, paste_ref, paste_box)
        fused = F.leaky_relu(self.fusion(torch.cat([h, r], 1)), 0.1)
        p = self.predictor(predictor_lr, predictor_ref, fused)
        res = fused.contiguous(memory_format=torch.channels_last)  # plain convs: NHWC is faster (oneDNN, cuDNN)
        for block in self.blocks:
            res = block(res, p)
        res = self.body_tail(res) + h
        return self.tail_mean(self.tail(self.upsampler(res)))


@dataclass
class SelfDZSROutput:
    """``sr`` (N,3,sH,sW); in training also ``degraded`` (KernelGen's output, (N,3,H,W), with grad),
    ``kernels`` (the 7x7/5x5/3x3 weights for the centroid loss) and ``pseudo_lr`` (detached)."""

    sr: torch.Tensor
    degraded: torch.Tensor | None = None
    kernels: list[torch.Tensor] | None = None
    pseudo_lr: torch.Tensor | None = None


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def _check_image(name: str, x: torch.Tensor, like: torch.Tensor | None = None, size=None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{type(x).__name__} {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor (N,3,H,W), got {got}")
    if like is not None and x.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must have batch size {like.shape[0]}, got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{name} must be (N,3,{size[0]},{size[1]}), got {tuple(x.shape)}")


def _check_paste_box(paste_box, paste_ref, scale: int, lr_size) -> None:
    n, _, ph, pw = paste_ref.shape
    if ph % scale or pw % scale:
        raise ValueError(f"paste_ref height and width must be multiples of scale={scale}, got {tuple(paste_ref.shape)}")
    h, w = ph // scale, pw // scale
    if not isinstance(paste_box, torch.Tensor) or paste_box.shape != (n, 4) or paste_box.is_floating_point():
        got = tuple(paste_box.shape) if isinstance(paste_box, torch.Tensor) else type(paste_box).__name__
        raise ValueError(f"paste_box must be an integer tensor (N={n}, 4) of (y0, y1, x0, x1), got {got}")
    for i, (y0, y1, x0, x1) in enumerate(paste_box.tolist()):
        if (y1 - y0, x1 - x0) != (h, w) or y0 < 0 or x0 < 0 or y1 > lr_size[0] or x1 > lr_size[1]:
            raise ValueError(f"paste_box[{i}]=({y0},{y1},{x0},{x1}) must be a {h}x{w} box (paste_ref size / scale) "
                             f"inside the {lr_size[0]}x{lr_size[1]} LR")


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
    """

    def __init__(self, scale: int = 4, drop_prob: float = 0.3, paste_prob: float = 0.3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        self.scale = scale
        self.kernel_gen = KernelGen(scale)
        self.extractor = MatchingExtractor()
        self.restoration = RestorationNet(scale, drop_prob, paste_prob)

    def forward(self, lr, ref, *, paste_ref=None, paste_box=None, predictor_lr=None, predictor_ref=None,
                gt=None, noise=None) -> SelfDZSROutput:
        s = self.scale
        _check_image("lr", lr)
        height, width = lr.shape[-2:]
        if height < MIN_LR_SIZE or width < MIN_LR_SIZE:
            raise ValueError(f"lr must be at least {MIN_LR_SIZE}x{MIN_LR_SIZE}, got {height}x{width}")
        _check_image("ref", ref, lr, (height, width))
        out = SelfDZSROutput(sr=lr)
        guide = lr
        if (gt is None) != (noise is None):
            raise ValueError("give both gt and noise (training with a pseudo-LR), or neither")
        if gt is not None:
            _check_image("gt", gt, lr, (s * height, s * width))
            _check_image("noise", noise, lr, (height, width))
            out.degraded, out.kernels = self.kernel_gen(gt, lr)
            guide = out.pseudo_lr = (out.degraded.detach() + noise).clamp(0, 1)
        if (paste_ref is None) != (paste_box is None):
            raise ValueError("give both paste_ref and paste_box, or neither")
        if paste_ref is not None:
            _check_image("paste_ref", paste_ref, lr)
            _check_paste_box(paste_box, paste_ref, s, (height, width))
        predictor_lr, predictor_ref = self._predictor_inputs(lr, paste_ref, paste_box, predictor_lr, predictor_ref)

        lr_p, guide_p, ref_p = (_pad_to_multiple(t, FEATURE_STRIDE) for t in (lr, guide, ref))
        if guide is lr:
            guide_p = lr_p
        offsets = matching_offsets(*self.extractor(guide_p, ref_p))
        sr = self.restoration(lr_p, guide_p, ref_p, offsets, predictor_lr, predictor_ref, paste_ref, paste_box)
        out.sr = sr[..., : s * height, : s * width]
        return out

    def _predictor_inputs(self, lr, paste_ref, paste_box, predictor_lr, predictor_ref):
        if predictor_ref is None:
            predictor_ref = paste_ref
        if predictor_lr is None and paste_box is not None:
            boxes = paste_box.tolist()
            predictor_lr = torch.stack([lr[i, :, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(boxes)])
        if predictor_lr is None or predictor_ref is None:
            raise ValueError("give predictor_lr and predictor_ref (an LR crop and the reference of the same "
                             "scene part), or paste_ref and paste_box from which they default")
        _check_image("predictor_lr", predictor_lr, lr)
        _check_image("predictor_ref", predictor_ref, lr)
        return predictor_lr, predictor_ref
