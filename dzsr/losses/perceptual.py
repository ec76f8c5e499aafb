"""Sliced-Wasserstein perceptual loss on VGG-19 features (the authors' ``SWDLoss``).

Images are RGB in [0, 1], (N, 3, H, W); they are normalised with the ImageNet mean/std and passed
through torchvision's VGG-19 ``features``, truncated after relu5_2 (the deepest layer used), frozen
and in eval mode. The loss is

    0.08 * (SW(relu3_2) + SW(relu4_2) + 2 * SW(relu5_2))

with ``dzsr_kernels.sliced_wasserstein_loss`` (C' = C // 2 fresh unit directions per layer and
call; relu5_2's single draw counts twice), as in the authors' ``models/losses.py``.

``LOSWLoss`` is SelfDZSR++'s variant (the authors' ``SWDLoss`` with ``SWDLocal``): the same
layers, weights and scale, each layer compared with ``dzsr_kernels.local_sliced_wasserstein_loss``
in k x k windows at stride 2, k = (the map's side) // 6 per layer (the authors' ``H // 4 // 6``,
``H // 8 // 6``, ``H // 16 // 6`` for an H x H image: 8, 4, 2 for a 192-pixel HR patch).

``SWLoss(vgg_dtype=torch.bfloat16)`` runs the frozen VGG stack under autocast in bfloat16 (the
features return to the images' dtype before the SW op): about 2x faster on CPUs with AVX512-BF16
and on GPUs, at bfloat16 feature precision. The default is float32, as the authors train.
"""

from __future__ import annotations

import os

import torch

from dzsr_kernels import local_sliced_wasserstein_loss, sliced_wasserstein_loss

from ..pretrained import load_state_dict

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG-19 weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Index of each ReLU in torchvision's vgg19().features.
VGG19_RELU_INDEX = {"relu3_2": 13, "relu4_2": 22, "relu5_2": 31}
SW_LAYER_WEIGHTS = (("relu3_2", 1.0), ("relu4_2", 1.0), ("relu5_2", 2.0))
SW_SCALE = 0.08
LOSW_WINDOW_DIVISOR = 6  # LOSWLoss: window side = the feature map's side // 6 (authors' p = 6)


# torchvision's VGG-19 configuration "E": conv widths, "M" = 2x2 max-pool.
VGG19_CONFIG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)


def vgg19_features(depth: int) -> torch.nn.Sequential:
    """The first ``depth`` modules of torchvision's ``vgg19().features`` (same indices, so the same
    state-dict keys), initialised as torchvision does; the classifier is never built."""
    layers: list[torch.nn.Module] = []
    channels = 3
    for width in VGG19_CONFIG:
        if width == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = torch.nn.Conv2d(channels, width, kernel_size=3, padding=1)
            torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
            layers += [conv, torch.nn.ReLU(inplace=True)]
            channels = width
    return torch.nn.Sequential(*layers[:depth])


class VGG19Features(torch.nn.Module):
    """Frozen VGG-19 ``features`` up to the deepest of ``layers``; ``forward`` returns {layer: map}.

    The stack runs in channels-last memory format (weights and activations; the returned maps are
    converted back to contiguous (N, C, H, W)): oneDNN's and cuDNN's NHWC convolutions and pooling are
    faster (on the 2-core CPU, 1.36x for forward+backward of the SR output plus forward of the target
    at batch 16, 192x192; measured with /tmp scripts, the whole-iteration effect is in BENCHMARKS.md).

    weights: ``"default"`` loads ``vgg19-dcbb9e9d.pth`` from the torch hub cache
    (``dzsr.pretrained.load_state_dict``, never downloads); a path (file, or folder holding it)
    loads that file; None keeps torchvision's random initialisation (tests).
    """

    def __init__(self, layers: tuple[str, ...], weights: str | os.PathLike | None = "default"):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_RELU_INDEX]
        if unknown:
            raise ValueError(
                f"unknown VGG-19 layers {unknown}; expected names from {sorted(VGG19_RELU_INDEX)}"
            )
        self.taps = {VGG19_RELU_INDEX[name]: name for name in layers}
        depth = max(self.taps) + 1
        self.features = vgg19_features(depth)
        if weights is not None:
            state = load_state_dict(VGG19_FILE, None if weights == "default" else weights)
            prefix = "features."
            kept = {
                k[len(prefix) :]: t
                for k, t in state.items()
                if k.startswith(prefix) and int(k[len(prefix) :].split(".")[0]) < depth
            }
            self.features.load_state_dict(kept, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.features.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        """Always eval: the extractor is frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer: features} of RGB ``images`` (N,3,H,W) in [0, 1], ImageNet-normalised: relu3_2
        (N,256,H/4,W/4), relu4_2 (N,512,H/8,W/8), relu5_2 (N,512,H/16,W/16) (sizes floored), each a
        contiguous map in the dtype the stack ran in (the images', or autocast's)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be RGB (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}"
            )
        x = ((images - self.mean.to(images.dtype)) / self.std.to(images.dtype)).contiguous(
            memory_format=torch.channels_last
        )
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x.contiguous()
        return out


class SWLoss(torch.nn.Module):
    """SelfDZSR's perceptual loss: ``SWLoss()(output, target)`` with RGB images in [0, 1].

    ``target`` features are computed without autograd unless ``target`` requires grad. ``generator``
    (in ``forward``) makes the projection draws reproducible. See the module doc for the formula.
    """

    def __init__(
        self, weights: str | os.PathLike | None = "default", vgg_dtype: torch.dtype | None = None
    ):
        super().__init__()
        if vgg_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(
                f"vgg_dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {vgg_dtype!r}"
            )
        self.vgg_dtype = None if vgg_dtype == torch.float32 else vgg_dtype
        self.vgg = VGG19Features(tuple(name for name, _ in SW_LAYER_WEIGHTS), weights)

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The 0-dim loss (module docstring) between ``output`` and ``target`` (N,3,H,W), RGB in
        [0, 1], in ``output``'s dtype; ``generator`` draws the projections."""
        if output.shape != target.shape:
            raise ValueError(
                f"target must have the shape of output {tuple(output.shape)}, got {tuple(target.shape)}"
            )
        with torch.autocast(
            output.device.type,
            dtype=self.vgg_dtype or torch.bfloat16,
            enabled=self.vgg_dtype is not None,
        ):
            f_out = self.vgg(output)
            with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
                f_tgt = self.vgg(target)
        total = 0.0
        for name, weight in SW_LAYER_WEIGHTS:
            u, v = f_out[name].to(output.dtype), f_tgt[name].to(output.dtype)
            total = total + weight * self.layer_loss(u, v, generator)
        return total * SW_SCALE

    def layer_loss(
        self, u: torch.Tensor, v: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The 0-dim loss of one layer's features u, v (N, C, h, w): the global SW loss."""
        return sliced_wasserstein_loss(u, v, generator=generator)


def losw_window(height: int, width: int) -> int:
    """LOSWLoss's window side for an h x w feature map: min(h, w) // 6, at least 1 (the authors
    take H // 6 of square patches, and their k = 0 below 6 pixels would be an error)."""
    return max(1, min(height, width) // LOSW_WINDOW_DIVISOR)


class LOSWLoss(SWLoss):
    """SelfDZSR++'s local perceptual loss: ``LOSWLoss()(output, target)``, RGB images in [0, 1].

    ``SWLoss`` with each layer compared by ``local_sliced_wasserstein_loss`` (windows of
    ``losw_window`` pixels at stride 2, C // 2 fresh directions per layer and call); the module
    doc has the formula, ``SWLoss`` the arguments.
    """

    def layer_loss(
        self, u: torch.Tensor, v: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The 0-dim local SW loss of one layer's features u, v (N, C, h, w)."""
        window = losw_window(u.shape[2], u.shape[3])
        return local_sliced_wasserstein_loss(u, v, window, generator=generator)
