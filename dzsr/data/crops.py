"""Crop boxes shared by preparation, datasets and the training sampler.

A box is ``(y0, y1, x0, x1)`` with half-open ranges, ``img[y0:y1, x0:x1]`` (HWC) or
``img[:, y0:y1, x0:x1]`` (CHW).
"""

from __future__ import annotations

Box = tuple[int, int, int, int]


def central_box(height: int, width: int, fraction_h: float, fraction_w: float | None = None) -> Box:
    """The centred box of size ``round(height*fraction_h) x round(width*fraction_w)``.

    Same placement as the authors' ``crop_center``: ``y0 = height // 2 - crop_h // 2``.
    """
    fraction_w = fraction_h if fraction_w is None else fraction_w
    if not (0.0 < fraction_h <= 1.0 and 0.0 < fraction_w <= 1.0):
        raise ValueError(f"crop fractions must lie in (0, 1], got {fraction_h}, {fraction_w}")
    crop_h, crop_w = round(height * fraction_h), round(width * fraction_w)
    if crop_h < 1 or crop_w < 1:
        raise ValueError(
            f"a {fraction_h:g} x {fraction_w:g} crop of a {height}x{width} image is empty"
        )
    y0, x0 = height // 2 - crop_h // 2, width // 2 - crop_w // 2
    return y0, y0 + crop_h, x0, x0 + crop_w


def reference_box(lr_height: int, lr_width: int, scale: int) -> Box:
    """The LR-grid box covered by the reference (the centre 1/scale crop), in LR pixels.

    The reference image is ``gt[scale*y0:scale*y1, scale*x0:scale*x1]``.
    """
    return central_box(lr_height, lr_width, 1.0 / scale)


def scale_box(box: Box, scale: int) -> Box:
    """``box`` on a ``scale`` x finer grid (LR -> HR pixels): every coordinate times ``scale``."""
    return tuple(scale * v for v in box)  # type: ignore[return-value]
