"""Frozen matching feature extractor (the authors' distilled ``ContrasExtractorSep``).

Two separate VGG16 trunks (conv1_1 .. conv3_1 with both max-pools removed, so full resolution;
the output is conv3_1 before its ReLU) for the query (LR or pseudo-LR) and the reference. Input
images in [0,1] are ImageNet-normalised; the 256-channel features are bilinearly resized by 1/4
(align_corners=True, size floor(H/4) x floor(W/4)).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRUNK = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
)


class VGGTrunk(nn.Module):
    """(N,3,H,W) in [0,1] -> (N,256,floor(H/4),floor(W/4))."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for name, c_in, c_out in _TRUNK:
            self.add_module(name, nn.Conv2d(c_in, c_out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised x (N,3,H,W) through conv1_1 .. conv3_1 (ReLU after all but conv3_1),
        bilinearly resized by 1/4: (N,256,floor(H/4),floor(W/4)), channels-last.

        The trunk runs channels-last whatever x's layout: oneDNN then convolves the full-resolution
        maps in place of reordering each one to its blocked format and back (NCHW needed two extra
        copies of the largest map; on the CPU machine a whole-image trunk of LR 687x1111 took
        9.6 s and 3.30 GiB resident at its end vs 8.3 s and 2.42 GiB channels-last)."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        for i, (name, _, _) in enumerate(_TRUNK):
            x = getattr(self, name)(x)
            if i < len(_TRUNK) - 1:
                x = F.relu(x)
        return F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True)


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
