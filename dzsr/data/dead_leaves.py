"""Synthetic "dead leaves" photographs: occluding shapes with scale-invariant sizes, a training
source with natural-image statistics (edges at every scale and orientation, occlusions, flat and
shaded regions, colour) for when few real photographs are at hand.

The model (Matheron's dead leaves; Lee, Mumford & Huang 2001 for its natural-image statistics):
shapes are stacked in random order, their size ``r`` drawn from ``p(r) ∝ r^-3`` on
``[R_MIN, size * R_MAX_FRACTION]`` (scale invariance), enough of them to cover the canvas
``COVERAGE`` times on average. Each picture, rendered at ``SUPERSAMPLE`` x resolution then
box-averaged (area anti-aliasing, as a sensor integrates light):
  * shapes: discs, ellipses and rotated rectangles (straight edges and corners), flat colours
    drawn in HSV with mostly low saturation;
  * a smooth multiplicative shading field (illumination), amplitude up to ``SHADING``;
  * a Gaussian defocus blur of sigma drawn from ``[0, BLUR_MAX]`` output pixels;
  * Gaussian noise of sigma drawn from ``[0, NOISE_MAX]`` (8-bit levels), then rounding to uint8.
Everything comes from the given ``numpy.random.Generator``: the same seed gives the same bytes.
"""

from __future__ import annotations

import cv2
import numpy as np

R_MIN = 3.0
R_MAX_FRACTION = 0.3
COVERAGE = 6.0
SUPERSAMPLE = 2
SHADING = 0.3
BLUR_MAX = 1.2
NOISE_MAX = 2.0


def leaf_radii(count: int, r_min: float, r_max: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` sizes from ``p(r) ∝ r^-3`` on ``[r_min, r_max]`` (inverse CDF)."""
    u = rng.random(count)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def leaf_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """``(count, 3)`` float RGB in [0, 1]: uniform hue, mostly low saturation, uniform value."""
    hsv = np.stack(
        [rng.random(count) * 360.0, rng.beta(1.0, 2.5, count), 0.05 + 0.9 * rng.random(count)], 1
    )
    return cv2.cvtColor(hsv.astype(np.float32)[None], cv2.COLOR_HSV2RGB)[0]


def _mean_area(r_min: float, r_max: float) -> float:
    """E[pi r^2] under ``leaf_radii``: 2 pi ln(r_max/r_min) / (r_min^-2 - r_max^-2)."""
    return 2 * np.pi * np.log(r_max / r_min) / (r_min**-2 - r_max**-2)


def _draw_leaves(canvas: np.ndarray, rng: np.random.Generator, r_min: float, r_max: float) -> None:
    side = canvas.shape[0]
    count = int(np.ceil(COVERAGE * side * side / _mean_area(r_min, r_max)))
    radii = leaf_radii(count, r_min, r_max, rng)
    centres = rng.random((count, 2)) * side
    colours = leaf_colours(count, rng)
    kinds = rng.choice(3, count, p=[0.5, 0.25, 0.25])
    aspects = 0.3 + 0.7 * rng.random(count)
    angles = rng.random(count) * 180.0
    for r, (cx, cy), colour, kind, aspect, angle in zip(
        radii, centres, colours, kinds, aspects, angles
    ):
        colour = tuple(float(c) for c in colour)
        if kind == 0:
            cv2.circle(canvas, (int(round(cx)), int(round(cy))), max(1, int(round(r))), colour, -1)
        elif kind == 1:
            axes = (max(1, int(round(r))), max(1, int(round(r * aspect))))
            cv2.ellipse(
                canvas, (int(round(cx)), int(round(cy))), axes, float(angle), 0, 360, colour, -1
            )
        else:
            corners = cv2.boxPoints(((float(cx), float(cy)), (2 * r, 2 * r * aspect), float(angle)))
            cv2.fillConvexPoly(canvas, np.round(corners).astype(np.int32), colour)


def _shading(side: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth field ``1 + a * n`` (n in [-1, 1], bicubic from a 4x4 grid), a in [0, SHADING]."""
    grid = rng.uniform(-1.0, 1.0, (4, 4)).astype(np.float32)
    field = cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC)
    return 1.0 + SHADING * rng.random() * np.clip(field, -1.0, 1.0)[..., None]


def dead_leaves(size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size`` uint8 RGB dead-leaves picture (module docstring)."""
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"dead-leaves size must be an integer of at least 16 pixels, got {size!r}")
    side = size * SUPERSAMPLE
    canvas = np.empty((side, side, 3), np.float32)
    canvas[...] = leaf_colours(1, rng)[0]
    _draw_leaves(canvas, rng, R_MIN * SUPERSAMPLE, size * R_MAX_FRACTION * SUPERSAMPLE)
    canvas *= _shading(side, rng)
    sigma = BLUR_MAX * rng.random() * SUPERSAMPLE
    if sigma > 0.1:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    img = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(
        axis=(1, 3), dtype=np.float64
    )
    img = img * 255.0 + rng.normal(0.0, NOISE_MAX * rng.random(), img.shape)
    return np.rint(np.clip(img, 0, 255)).astype(np.uint8)
