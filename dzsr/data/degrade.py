"""Pseudo-LR noise map: the degradation the authors add to the KernelGen output during training.

Recipe (authors' data/degrade/degrade_kernel.py + models/refsr_model.py): three operations on the
uint8 GT patch, in a uniformly random order, each followed by clipping to [0, 255] and storing as
uint8:
  * ``down``: bilinear resize by ``1/scale`` as ``cv2.resize(..., INTER_LINEAR)`` does it (``bilinear_down``);
  * ``noise``: additive Gaussian noise, sigma an integer drawn uniformly from [5, 30] (of 255);
  * ``jpeg``: OpenCV JPEG round trip, quality an integer drawn uniformly from [60, 95].
Those ranges are the authors' (real captures). ``Degradation.sample`` takes others, and ``None``
drops that operation, for data whose short-focus images are cleaner (``data.noise_sigma`` and
``data.jpeg_quality`` in a training config; the bundled sample's are clean 8-bit box averages).
The noise map is ``degraded/255 - bicubic(gt)``, where ``bicubic`` is
``F.interpolate(gt, scale_factor=1/scale, mode="bicubic", align_corners=True)`` on the float GT in
[0, 1], as in the authors' model. Pseudo-LR = KernelGen(gt).detach() + noise map, clamped to [0, 1].

Two deliberate differences from the authors' code: float -> uint8 conversions round to nearest
(the authors' ``np.uint8`` truncates, biasing the image darker by half a level per operation), and
the JPEG encoder is given BGR data as OpenCV expects (the authors pass RGB, so their JPEG luma
weights red and blue the wrong way round).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

OPERATIONS = ("down", "noise", "jpeg")
SIGMA_RANGE = (5, 30)
QUALITY_RANGE = (60, 95)


@dataclass(frozen=True)
class Degradation:
    """One draw of the degradation: operation order, noise sigma (of 255), JPEG quality."""

    order: tuple[str, ...]
    sigma: int
    quality: int

    @staticmethod
    def sample(
        rng: np.random.Generator,
        sigma_range: tuple[int, int] | None = SIGMA_RANGE,
        quality_range: tuple[int, int] | None = QUALITY_RANGE,
    ) -> Degradation:
        """A random order of the operations, sigma and quality uniform integers in the inclusive
        ranges; a ``None`` range leaves that operation out of the order."""
        order = tuple(OPERATIONS[i] for i in rng.permutation(len(OPERATIONS)))
        sigma = quality = 0
        if sigma_range is None:
            order = tuple(op for op in order if op != "noise")
        else:
            sigma = int(rng.integers(sigma_range[0], sigma_range[1], endpoint=True))
        if quality_range is None:
            order = tuple(op for op in order if op != "jpeg")
        else:
            quality = int(rng.integers(quality_range[0], quality_range[1], endpoint=True))
        return Degradation(order, sigma, quality)

    @staticmethod
    def check_ranges(sigma_range, quality_range) -> tuple:
        """Validated ``(sigma_range, quality_range)`` as int tuples or ``None`` (config values)."""
        out = []
        for name, value, lo, hi in (
            ("noise_sigma", sigma_range, 0, 255),
            ("jpeg_quality", quality_range, 1, 100),
        ):
            if value is None:
                out.append(None)
                continue
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or not lo <= value[0] <= value[1] <= hi
            ):
                raise ValueError(
                    f"data.{name} must be null or [low, high] integers with {lo} <= low <= high <= {hi}, "
                    f"got {value!r}"
                )
            out.append((int(value[0]), int(value[1])))
        return tuple(out)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bilinear_down(img: np.ndarray, scale: int) -> np.ndarray:
    """``cv2.resize(img, (w//s, h//s), interpolation=INTER_LINEAR)`` for H, W multiples of ``s``, in
    float64: output pixel i reads input position ``s*i + (s-1)/2``, i.e. the mean of the two (even
    ``s``) or the one (odd ``s``) central rows/columns of each ``s x s`` block, with no antialiasing."""
    h, w, c = img.shape
    mid = [(scale - 1) // 2, scale // 2]
    blocks = img.reshape(h // scale, scale, w // scale, scale, c)[:, mid][:, :, :, mid]
    return blocks.astype(np.float64).mean(axis=(1, 3))


def degrade(
    gt: np.ndarray, scale: int, params: Degradation, rng: np.random.Generator
) -> np.ndarray:
    """Apply ``params`` to a uint8 RGB HWC image (H, W multiples of ``scale``); returns uint8
    ``(H//scale, W//scale, 3)``. Uses no OpenCV thread pool (safe in forked DataLoader workers)."""
    if gt.dtype != np.uint8 or gt.ndim != 3 or gt.shape[2] != 3:
        raise ValueError(f"gt must be a uint8 (H, W, 3) array, got {gt.dtype} {gt.shape}")
    if gt.shape[0] % scale or gt.shape[1] % scale:
        raise ValueError(
            f"gt size {gt.shape[0]}x{gt.shape[1]} must be a multiple of the scale {scale}"
        )
    img = gt
    for op in params.order:
        if op == "down":
            img = _to_u8(bilinear_down(img, scale))
        elif op == "noise":
            img = _to_u8(img + rng.normal(0.0, params.sigma, img.shape))
        elif op == "jpeg":
            ok, buf = cv2.imencode(
                ".jpg",
                np.ascontiguousarray(img[..., ::-1]),
                [cv2.IMWRITE_JPEG_QUALITY, params.quality],
            )
            if not ok:
                raise RuntimeError("OpenCV JPEG encoding failed")
            img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        else:
            raise ValueError(f"unknown degradation operation {op!r}, expected one of {OPERATIONS}")
    return img


def bicubic_down(gt: torch.Tensor, scale: int) -> torch.Tensor:
    """The authors' bicubic reference: ``(..., 3, H, W)`` -> ``(..., 3, H//scale, W//scale)``."""
    lead = gt.shape[:-3]
    x = gt.reshape(-1, *gt.shape[-3:])
    size = (gt.shape[-2] // scale, gt.shape[-1] // scale)
    out = F.interpolate(x, size=size, mode="bicubic", align_corners=True)
    return out.reshape(*lead, *out.shape[-3:])


def noise_map(
    gt: np.ndarray, scale: int, rng: np.random.Generator, params: Degradation | None = None
) -> torch.Tensor:
    """Noise map ``(3, H//scale, W//scale)`` float32 for a uint8 RGB HWC GT patch (signed values);
    ``params`` defaults to a draw with the authors' ranges."""
    params = Degradation.sample(rng) if params is None else params
    degraded = torch.from_numpy(
        degrade(gt, scale, params, rng).transpose(2, 0, 1).astype(np.float32) / 255.0
    )
    gt_t = torch.from_numpy(gt.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return degraded - bicubic_down(gt_t, scale)
