"""Image quality metrics: PSNR, SSIM, LPIPS on the Full-Image and the Corner-Image, computed the
way the authors' evaluation script does (``docs/design.md#evaluation``).

Images are RGB: numpy arrays are HWC ``(H, W, 3)`` (float in [0, 1], or uint8 divided by 255),
tensors are CHW ``(3, H, W)`` or ``(1, 3, H, W)`` floats in [0, 1]. No border is shaved, no
clipping or rounding is applied. PSNR and SSIM are computed in float64 numpy, on RGB or, with
``image_metrics(..., y_channel=True)``, on the BT.601 luma (``luma``); LPIPS always on RGB.

Corner-Image (the authors' ``crop_part``): with ``ch = H // s``, ``cw = W // s``,
``y0 = (H - ch) // 2``, ``x0 = (W - cw) // 2``, the central region is rows ``[y0, y0+ch)`` x
columns ``[x0, x0+cw)``; the corner image is the rest, split into four disjoint strips:
``left`` all rows x ``[0, x0)``, ``right`` all rows x ``[x0+cw, W)``, ``top`` ``[0, y0)`` x
``[x0, x0+cw)``, ``bottom`` ``[y0+ch, H)`` x ``[x0, x0+cw)``.
Corner PSNR is computed from the area-weighted mean of the strips' MSE (the MSE over all corner
pixels). Corner SSIM and LPIPS are the plain mean of the four strips' values by default
(``corner_weighting="plain"``, as the authors compute them) or their area-weighted mean
(``"area"``); the two agree only when the strips have equal areas.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re

import cv2
import numpy as np
import torch
import torch.nn as nn

from .data.crops import Box

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_BAND_ROWS = 256
LPIPS_MIN_SIZE = 31  # smallest side AlexNet's five LPIPS stages accept
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_LIN_FILE = "lpips_v0.1_alex.pth"
CORNER_WEIGHTINGS = ("plain", "area")
# BT.601 luma as MATLAB's rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B (RGB in [0, 1], Y in
# [16, 235]); ``luma`` returns it divided by 255.
LUMA_OFFSET, LUMA_WEIGHTS = 16.0, (65.481, 128.553, 24.966)


def _as_image(name: str, img) -> np.ndarray:
    """numpy HWC (float in [0, 1] or uint8) / tensor CHW or 1CHW -> float64 numpy (H, W, 3)."""
    if isinstance(img, torch.Tensor):
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(
                f"{name} must have shape (3, H, W) or (1, 3, H, W), got {tuple(img.shape)}"
            )
        if not img.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {img.dtype}")
        img = img.detach().cpu().to(torch.float64).numpy().transpose(1, 2, 0)
    if not isinstance(img, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array (H, W, 3) or a tensor (3, H, W), "
            f"got {type(img).__name__}"
        )
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be a numpy array of shape (H, W, 3), got {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got {img.dtype}")
    return np.ascontiguousarray(img, dtype=np.float64)


def _pair(sr, gt) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_image("sr", sr), _as_image("gt", gt)
    if a.shape != b.shape:
        raise ValueError(f"sr and gt must have the same shape, got {a.shape} and {b.shape} (HWC)")
    return a, b


def luma(img) -> np.ndarray:
    """BT.601 luma of an RGB image (as ``_as_image`` accepts), MATLAB ``rgb2ycbcr`` style, not
    rounded: float64 ``(H, W, 1)`` equal to ``(16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for
    R, G, B in [0, 1], so in [16/255, 235/255]."""
    rgb = _as_image("img", img)
    return ((LUMA_OFFSET + rgb @ np.array(LUMA_WEIGHTS)) / 255.0)[..., None]


def mse(sr, gt) -> float:
    """Mean squared error over all pixels and channels of ``sr`` and ``gt`` (as ``_as_image``
    accepts, one shape), computed in float64."""
    a, b = _pair(sr, gt)
    return float(np.mean((a - b) ** 2))


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error ``value`` (values spanning ``data_range``); inf for 0."""
    return math.inf if value == 0 else 10.0 * math.log10(data_range**2 / value)


def psnr(sr, gt, data_range: float = 1.0) -> float:
    """PSNR in dB over all pixels and channels."""
    return psnr_from_mse(mse(sr, gt), data_range)


def _gaussian_taps() -> np.ndarray:
    r = SSIM_WINDOW // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim(sr, gt, data_range: float = 1.0, sample_covariance: bool = True) -> float:
    """Mean SSIM over the RGB channels, equal to ``skimage.metrics.structural_similarity(sr, gt,
    win_size=11, gaussian_weights=True, data_range=data_range, channel_axis=-1)`` with skimage's
    default ``use_sample_covariance=True`` (``sample_covariance=False``: the population covariance
    of Wang et al. 2004). See ``_channel_ssim``."""
    a, b = _pair(sr, gt)
    return _channel_ssim(a, b, data_range, sample_covariance)


def _channel_ssim(
    a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sample_covariance: bool = True
) -> float:
    """SSIM of two float64 ``(H, W, C)`` arrays, averaged over the C channels: 11-tap Gaussian
    window (sigma 1.5), K1=0.01, K2=0.03, the local (co)variances scaled by 121/120 for the sample
    covariance, averaged over the pixels at least 5 pixels from the border (skimage crops that
    border, so the filter's padding never matters). Computed per channel in bands of rows (exact:
    the window only reaches 5 rows), so memory stays a few full-width rows, not a dozen
    full-image float64 maps."""
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[:2]}"
        )
    g, r = _gaussian_taps(), SSIM_WINDOW // 2
    n = SSIM_WINDOW**2
    cov_norm = n / (n - 1) if sample_covariance else 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    rows_out, width_out = a.shape[0] - 2 * r, a.shape[1] - 2 * r

    def blur(t: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(t, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    means = []
    for c in range(a.shape[2]):
        total = 0.0
        for y0 in range(0, rows_out, SSIM_BAND_ROWS):
            y1 = min(y0 + SSIM_BAND_ROWS, rows_out) + 2 * r
            x, y = np.ascontiguousarray(a[y0:y1, :, c]), np.ascontiguousarray(b[y0:y1, :, c])
            ux, uy, uxx, uyy, uxy = (blur(t) for t in (x, y, x * x, y * y, x * y))
            vx, vy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy)
            vxy = cov_norm * (uxy - ux * uy)
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
            total += float(s.sum())
        means.append(total / (rows_out * width_out))
    return float(np.mean(means))


def central_region(height: int, width: int, scale: int) -> Box:
    """The central ``(H//s) x (W//s)`` box excluded from the Corner-Image."""
    ch, cw = height // scale, width // scale
    y0, x0 = (height - ch) // 2, (width - cw) // 2
    return y0, y0 + ch, x0, x0 + cw


def corner_strips(height: int, width: int, scale: int) -> dict[str, Box]:
    """The four disjoint strips of the Corner-Image (module docstring), as ``(y0, y1, x0, x1)``."""
    if scale < 2:
        raise ValueError(f"Corner-Image needs scale >= 2, got {scale}")
    y0, y1, x0, x1 = central_region(height, width, scale)
    return {
        "left": (0, height, 0, x0),
        "right": (0, height, x1, width),
        "top": (0, y0, x0, x1),
        "bottom": (y1, height, x0, x1),
    }


def _area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features[:12]`` (same module indices, so its state dict loads);
    LPIPS compares the outputs of its five ReLU stages, ``features[:2]``, ``[2:5]``, ``[5:8]``,
    ``[8:10]``, ``[10:12]`` (64, 192, 384, 256, 256 channels)."""

    STAGE_ENDS = (2, 5, 8, 10, 12)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def stages(self) -> list[nn.Sequential]:
        """The five ReLU stages as slices of ``features`` (``STAGE_ENDS``), applied in turn."""
        starts = (0, *self.STAGE_ENDS[:-1])
        return [self.features[a:b] for a, b in zip(starts, self.STAGE_ENDS)]


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), implemented here.

    ``forward(x, y)`` takes ``(N, 3, H, W)`` images in [0, 1] (H, W >= 31) and returns the ``(N,)``
    distances: inputs mapped to [-1, 1], shifted/scaled per channel, the five AlexNet ReLU stages
    unit-normalised over channels, squared differences weighted by the non-negative 1x1 "lin"
    layers, averaged over space and summed over stages. Built with random weights; use
    ``from_pretrained`` for the published ones.
    """

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        # random but non-negative, like the trained weights: distances stay >= 0
        for lin in self.lins:
            nn.init.uniform_(lin.weight, 0.0, 2.0 / lin.in_channels)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, alexnet_state: dict, lin_state: dict) -> LPIPS:
        """Load torchvision AlexNet weights (``features.*`` keys; others ignored) and the LPIPS lin
        layers (the ``lpips`` package's ``linK.model.1.weight`` keys, or ``lins.K.weight``)."""
        feats = {k: v for k, v in alexnet_state.items() if k.startswith("features.")}
        self.net.load_state_dict(feats)
        lins = {}
        for k, v in lin_state.items():
            found = re.fullmatch(r"lins?\.?(\d+)(?:\.model\.1)?\.weight", k)
            if found is None:
                raise ValueError(
                    f"unexpected key {k!r} in the LPIPS lin weights (expected linK.model.1.weight)"
                )
            lins[f"{found.group(1)}.weight"] = v
        self.lins.load_state_dict(lins)
        return self

    @classmethod
    def from_pretrained(cls, alexnet_path: str | None = None, lin_path: str | None = None) -> LPIPS:
        """Published weights, offline. AlexNet: ``dzsr.pretrained.load_state_dict(ALEXNET_FILE,
        alexnet_path)`` (a user path or the torch hub checkpoints folder). Lin layers: ``lin_path``,
        else the installed ``lpips`` package's ``weights/v0.1/alex.pth``, else
        ``<torch hub>/checkpoints/lpips_v0.1_alex.pth``. Missing files raise FileNotFoundError."""
        from .checkpoint import read_state_dict
        from .pretrained import load_state_dict

        alexnet = load_state_dict(ALEXNET_FILE, alexnet_path)
        lin = read_state_dict(lpips_lin_path(lin_path), "LPIPS lin weights")
        return cls().load_weights(alexnet, lin)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The (N,) distances between ``x`` and ``y`` (N,3,H,W) in [0, 1], H, W >=
        ``LPIPS_MIN_SIZE`` (class docstring), in the model's dtype: the inputs are cast to it."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                "LPIPS needs two (N, 3, H, W) tensors of one shape, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            raise ValueError(
                f"LPIPS needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, "
                f"got {tuple(x.shape[-2:])}"
            )
        dtype = self.shift.dtype
        fx = ((x.to(dtype) * 2 - 1) - self.shift) / self.scale
        fy = ((y.to(dtype) * 2 - 1) - self.shift) / self.scale
        total = 0
        # Stage by stage, so only one stage's activations are alive (bounded memory on full images).
        for stage, lin in zip(self.net.stages(), self.lins):
            fx, fy = stage(fx), stage(fy)
            a = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow_(2)).mean(dim=(1, 2, 3))
            del a, b
        return total


def installed_lpips_dir() -> str | None:
    """Folder of the installed ``lpips`` package (found without importing it), or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def lpips_lin_path(path: str | None = None) -> str:
    """Where the LPIPS v0.1 AlexNet lin weights are (see ``LPIPS.from_pretrained``)."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LPIPS lin weights not found: {path}")
        return path
    tried = []
    package = installed_lpips_dir()
    if package is not None:
        candidate = os.path.join(package, "weights", "v0.1", "alex.pth")
        if os.path.isfile(candidate):
            return candidate
        tried.append(candidate)
    candidate = os.path.join(torch.hub.get_dir(), "checkpoints", LPIPS_LIN_FILE)
    if os.path.isfile(candidate):
        return candidate
    tried.append(candidate)
    raise FileNotFoundError(
        f"LPIPS v0.1 AlexNet lin weights not found (tried {', '.join(tried)}): pass the path of "
        "the lpips package's weights/v0.1/alex.pth, `pip install lpips`, or copy it to "
        f"{candidate}"
    )


def lpips_distance(model: LPIPS, sr, gt) -> float:
    """LPIPS distance of one image pair (as ``_as_image`` accepts) on ``model``'s device and in its
    dtype, without autograd."""
    a, b = _pair(sr, gt)
    dev = next(model.parameters()).device
    dtype = model.shift.dtype
    x, y = (torch.from_numpy(t).permute(2, 0, 1).unsqueeze(0).to(dev, dtype) for t in (a, b))
    with torch.no_grad():
        return float(model(x, y)[0])


def _crop(img: np.ndarray, box: Box) -> np.ndarray:
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


def image_metrics(
    sr,
    gt,
    scale: int,
    lpips: LPIPS | None = None,
    corner_weighting: str = "plain",
    y_channel: bool = False,
) -> dict[str, float]:
    """Full-Image and Corner-Image PSNR / SSIM (and LPIPS when a model is given) of one image, as
    the module docstring says: corner PSNR from the area-weighted MSE, corner SSIM / LPIPS the
    ``corner_weighting`` ("plain" or "area") mean of the four strips; ``y_channel``: PSNR and
    SSIM on the BT.601 luma (``luma``), LPIPS still on RGB.

    Keys, in table order, name the settings: ``psnr``, ``ssim``, ``lpips``, ``psnr_corner``,
    ``ssim_corner``, ``lpips_corner``; ``_y`` follows ``psnr`` / ``ssim`` with ``y_channel``, and
    ``_area`` ends the corner SSIM / LPIPS keys with ``corner_weighting="area"`` (e.g.
    ``ssim_y_corner_area``).
    """
    if corner_weighting not in CORNER_WEIGHTINGS:
        raise ValueError(
            f"corner_weighting must be one of {', '.join(CORNER_WEIGHTINGS)}, "
            f"got {corner_weighting!r}"
        )
    a, b = _pair(sr, gt)
    strips = list(corner_strips(a.shape[0], a.shape[1], scale).values())
    narrowest = min(min(y1 - y0, x1 - x0) for y0, y1, x0, x1 in strips)
    need = LPIPS_MIN_SIZE if lpips is not None else SSIM_WINDOW
    if narrowest < need:
        raise ValueError(
            f"image {a.shape[0]}x{a.shape[1]} is too small for Corner-Image metrics "
            f"at scale {scale}: a corner strip is {narrowest} px wide, at least "
            f"{need} needed"
        )
    pa, pb = (luma(a), luma(b)) if y_channel else (a, b)
    areas = np.array([_area(box) for box in strips], dtype=np.float64)
    area_weighted = corner_weighting == "area"
    weights = areas / areas.sum() if area_weighted else np.full(len(strips), 1.0 / len(strips))
    y, corner = ("_y" if y_channel else ""), ("_corner_area" if area_weighted else "_corner")
    out = {
        f"psnr{y}": psnr_from_mse(float(np.mean((pa - pb) ** 2))),
        f"ssim{y}": _channel_ssim(pa, pb),
    }
    if lpips is not None:
        out["lpips"] = lpips_distance(lpips, a, b)
    strip_mse = [np.mean((_crop(pa, box) - _crop(pb, box)) ** 2) for box in strips]
    out[f"psnr{y}_corner"] = psnr_from_mse(float(np.dot(areas, strip_mse) / areas.sum()))
    strip_ssim = [_channel_ssim(_crop(pa, box), _crop(pb, box)) for box in strips]
    out[f"ssim{y}{corner}"] = float(np.dot(weights, strip_ssim))
    if lpips is not None:
        strip_lpips = [lpips_distance(lpips, _crop(a, box), _crop(b, box)) for box in strips]
        out[f"lpips{corner}"] = float(np.dot(weights, strip_lpips))
    return out
