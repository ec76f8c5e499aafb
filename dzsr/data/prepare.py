"""Turn a raw (short-focus, telephoto) capture into an aligned training pair, without any weights.

Pipeline of ``prepare_pair`` (the authors' data_preprocess/, with PWC-Net replaced by OpenCV DIS
and the colour matching done in float):

1. Focal-ratio centre crop of the short-focus image: the box of ``central_box(H, W, ratio)``
   (``ratio`` = short focal length / tele focal length, default ``1/scale``) gives the LR image,
   ``lr`` of size ``h x w``; it sees about the same scene as the telephoto.
2. The telephoto is resized to the HR grid ``(scale*h, scale*w)``; dense DIS optical flow is
   computed on the LR grid between ``lr`` and the telephoto shrunk to ``h x w`` (grays normalised to
   the same mean/std), upsampled to the HR grid and used to backward-warp the full-resolution
   telephoto onto the (upsampled) LR. ``mask`` marks HR pixels whose source lies inside the tele.
3. Border trim: ``trim`` LR pixels (``scale*trim`` HR pixels) are removed on every side; by default
   the smallest trim that leaves only valid pixels.
4. Colour/brightness matching of the warped telephoto to the bicubic-upsampled LR (``match_colour``).
5. Reference = centre ``1/scale`` crop of the matched telephoto (``crops.reference_box``).

``residual_motion`` runs steps 1-2 up to the flow and says whether the telephoto is already aligned
with the crop (``dzsr sr --align auto`` then uses it as it is).

All images are float32 RGB HWC numpy arrays in [0, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .crops import Box, central_box, reference_box, scale_box
from .imageio import check_rgb, is_image_file, read_rgb, to_float, write_rgb

# BT.601 luma, the Y of OpenCV's RGB->YCrCb.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# An already aligned telephoto: residual flow at most this many HR pixels (median, 90th percentile).
ALIGNED_MEDIAN_HR, ALIGNED_P90_HR = 0.5, 1.0


@dataclass(frozen=True)
class ColourFit:
    """Luma affine ``Y' = a*Y + b`` (chroma kept) followed by RGB ``gains``."""

    a: float
    b: float
    gains: tuple[float, float, float]

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Apply the fit to a float HWC image; no clipping."""
        img = img.astype(np.float32)
        luma = img @ _LUMA.astype(np.float32)
        # With Cr, Cb fixed, changing Y by d adds d to all three of R, G, B.
        out = img + ((self.a - 1.0) * luma + self.b).astype(np.float32)[..., None]
        return out * np.asarray(self.gains, dtype=np.float32)


def fit_colour(
    source: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    ignore_fraction: float = 0.05,
    refits: int = 2,
    max_pixels: int = 1 << 21,
) -> ColourFit:
    """Fit the colour change that maps ``source`` onto ``target`` (both float HWC, same size).

    Luma: least squares ``Y_target ~ a*Y_source + b`` over the valid pixels, ignoring the
    ``ignore_fraction`` of them with the largest error (occlusions, residual misalignment). The
    first fit ranks pixels by ``|Y_target - Y_source|`` (the authors' single pass); each of the
    ``refits`` further fits ranks them by the residual of the previous fit, which finds the
    outliers even when the brightness change is large. Images with more than ``max_pixels`` valid
    pixels are fitted on every k-th of them. Then per-channel gains ``g_c = (m_t[c]/m_t) /
    (m_s[c]/m_s)`` that give the source the target's channel balance (``m[c]`` channel means, ``m``
    the mean over channels, valid pixels).
    """
    if source.shape != target.shape:
        raise ValueError(
            f"source and target must have the same shape, got {source.shape} and {target.shape}"
        )
    valid = np.ones(source.shape[:2], bool) if mask is None else mask.astype(bool)
    index = np.flatnonzero(valid)
    if index.size < 2:
        raise ValueError("colour fit needs at least 2 valid pixels")
    index = index[:: -(-index.size // max_pixels)]  # a regular subset bounds time and memory
    src = source.reshape(-1, 3)[index].astype(np.float64)
    tgt = target.reshape(-1, 3)[index].astype(np.float64)
    y_src, y_tgt = src @ _LUMA, tgt @ _LUMA
    a, b = 1.0, 0.0
    for _ in range(refits + 1):
        err = np.abs(y_tgt - (a * y_src + b))
        keep = err <= np.quantile(err, 1.0 - ignore_fraction)
        design = np.stack([y_src[keep], np.ones(int(keep.sum()))], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y_tgt[keep], rcond=None)
    matched = src + ((a - 1.0) * y_src + b)[:, None]
    m_src, m_tgt = matched.mean(axis=0), tgt.mean(axis=0)
    if np.any(m_src <= 0):
        raise ValueError("colour fit failed: a channel of the source is black after the luma fit")
    gains = (m_tgt / m_tgt.mean()) / (m_src / m_src.mean())
    return ColourFit(float(a), float(b), tuple(float(g) for g in gains))


def match_colour(
    source: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    ignore_fraction: float = 0.05,
    refits: int = 2,
) -> tuple[np.ndarray, ColourFit]:
    """``source`` colour-matched to ``target`` (float HWC in [0, 1], clipped) and the fit used."""
    fit = fit_colour(source, target, mask, ignore_fraction, refits)
    return np.clip(fit.apply(source), 0.0, 1.0), fit


def _gray_u8(img: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    gray = img.astype(np.float64) @ _LUMA
    if like is not None:  # same mean/std as `like`: DIS compares raw intensities
        gray = (gray - gray.mean()) / (gray.std() + 1e-8) * like.std() + like.mean()
    return np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)


def estimate_flow(
    target: np.ndarray, moving: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> np.ndarray:
    """DIS optical flow ``(H, W, 2)`` as (dx, dy) such that ``target(p) ~ moving(p + flow(p))``.

    Both inputs are float HWC images of the same size; the moving image's gray is normalised to the
    target's mean and standard deviation first.
    """
    if target.shape != moving.shape:
        raise ValueError(f"flow needs images of one size, got {target.shape} and {moving.shape}")
    target_gray = target.astype(np.float64) @ _LUMA
    dis = cv2.DISOpticalFlow_create(preset)
    return dis.calc(_gray_u8(target), _gray_u8(moving, like=target_gray), None)


def warp_with_flow(
    img: np.ndarray, flow: np.ndarray, scale: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Backward-warp ``img`` (``scale*h x scale*w``) with an LR-grid flow ``(h, w, 2)`` in LR pixels.

    The flow is bilinearly upsampled to the image grid (pixel-centre aligned) and multiplied by
    ``scale``. Returns the warped image (zeros outside) and the boolean validity mask (source
    position inside the image).
    """
    h, w = flow.shape[:2]
    big_h, big_w = img.shape[:2]
    if (big_h, big_w) != (scale * h, scale * w):
        raise ValueError(f"image must be {scale}x the flow size {h}x{w}, got {big_h}x{big_w}")
    flow_big = (
        cv2.resize(flow, (big_w, big_h), interpolation=cv2.INTER_LINEAR) * scale
        if scale != 1
        else flow
    )
    grid_x, grid_y = np.meshgrid(
        np.arange(big_w, dtype=np.float32), np.arange(big_h, dtype=np.float32)
    )
    map_x, map_y = grid_x + flow_big[..., 0], grid_y + flow_big[..., 1]
    warped = cv2.remap(
        img.astype(np.float32),
        map_x,
        map_y,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    valid = (map_x >= 0) & (map_x <= big_w - 1) & (map_y >= 0) & (map_y <= big_h - 1)
    return warped, valid


def smallest_valid_trim(mask: np.ndarray, scale: int) -> int:
    """Smallest LR border ``t`` such that ``mask[s*t:H-s*t, s*t:W-s*t]`` is all valid."""
    big_h, big_w = mask.shape
    ys, xs = np.nonzero(~mask)
    if ys.size == 0:
        return 0
    # For an invalid pixel, the trim that removes it from each side; the cheapest side wins.
    from_top, from_left = ys // scale + 1, xs // scale + 1
    from_bottom, from_right = -(-(big_h - ys) // scale), -(-(big_w - xs) // scale)
    per_pixel = np.minimum(np.minimum(from_top, from_bottom), np.minimum(from_left, from_right))
    return int(per_pixel.max())


def check_pair_geometry(short_shape, tele_shape, box: Box, scale: int) -> None:
    """The telephoto (shape ``tele_shape``, HWC) must show the short-focus crop ``box`` (of an image
    of ``short_shape``) at about ``scale`` x its size and the same aspect; otherwise ValueError."""
    crop_h, crop_w = box[1] - box[0], box[3] - box[2]
    tele_h, tele_w = tele_shape[:2]
    ratio_h, ratio_w = tele_h / (scale * crop_h), tele_w / (scale * crop_w)
    if abs(np.log(ratio_h / ratio_w)) > 0.1:
        raise ValueError(
            f"telephoto aspect {tele_h}x{tele_w} does not match the short-focus crop {crop_h}x{crop_w} "
            f"(rotated or mismatched images?)"
        )
    if not (0.5 <= ratio_h <= 2.0):
        raise ValueError(
            f"telephoto size {tele_h}x{tele_w} is inconsistent with scale {scale}: the short-focus crop is "
            f"{crop_h}x{crop_w} (of {short_shape[0]}x{short_shape[1]}), so about {scale * crop_h}x{scale * crop_w} "
            f"was expected"
        )


def resize_tele(tele: np.ndarray, height: int, width: int, scale: int) -> np.ndarray:
    """The float telephoto resized to the HR grid ``(scale*height, scale*width)`` of an LR crop of
    ``height x width`` (area when shrinking, bicubic when enlarging), clipped to [0, 1]."""
    shrink = tele.shape[0] > scale * height
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.clip(
        cv2.resize(tele, (scale * width, scale * height), interpolation=interpolation), 0.0, 1.0
    )


@dataclass(frozen=True)
class ResidualMotion:
    """How far the telephoto, resized onto the focal-ratio crop, is from it: the median and 90th
    percentile of the DIS flow's length over the crop, in HR pixels."""

    median: float
    p90: float

    @property
    def aligned(self) -> bool:
        """At most ``ALIGNED_MEDIAN_HR`` (median) and ``ALIGNED_P90_HR`` (90th percentile) HR
        pixels: re-aligning could not do better than DIS's own precision."""
        return self.median <= ALIGNED_MEDIAN_HR and self.p90 <= ALIGNED_P90_HR

    def __str__(self) -> str:
        return (
            f"residual motion {self.median:.2f} HR px median, {self.p90:.2f} HR px 90th percentile"
        )


def residual_motion(
    short: np.ndarray, tele: np.ndarray, scale: int, focal_ratio: float | None = None
) -> ResidualMotion:
    """Steps 1-2 of ``prepare_pair`` up to the flow (float HWC inputs, the geometry checked the same
    way), measured in HR pixels. On the bundled samples, a telephoto cut from the ground truth
    measures 0.02-0.2 px (median), shifted by one HR pixel about 1 px, the raw pairs 2-8 px."""
    crop_box = central_box(short.shape[0], short.shape[1], focal_ratio or 1.0 / scale)
    check_pair_geometry(short.shape, tele.shape, crop_box, scale)
    lr = short[crop_box[0] : crop_box[1], crop_box[2] : crop_box[3]]
    h, w = lr.shape[:2]
    tele_lr = cv2.resize(resize_tele(tele, h, w, scale), (w, h), interpolation=cv2.INTER_AREA)
    length = scale * np.hypot(*np.moveaxis(estimate_flow(lr, tele_lr), -1, 0))
    return ResidualMotion(float(np.median(length)), float(np.quantile(length, 0.9)))


def prepare_pair(
    short: np.ndarray,
    tele: np.ndarray,
    scale: int,
    focal_ratio: float | None = None,
    trim: int | None = None,
    ignore_fraction: float = 0.05,
) -> dict:
    """Align a raw dual-zoom capture into ``lr`` / ``gt`` / ``ref`` (see the module docstring).

    Args:
        short: short-focus (wide) image, HWC RGB, uint8/uint16 or float in [0, 1].
        tele: telephoto image of the same scene, HWC RGB, about ``scale`` x the short-focus crop.
        scale: integer SR factor (4 for Nikon, 2 for CameraFusion).
        focal_ratio: short/tele focal length ratio used for the crop (default ``1/scale``).
        trim: LR border removed after warping; ``None`` picks the smallest fully valid one.

    Returns a dict of float32 HWC arrays in [0, 1] and metadata:
        ``lr (h, w, 3)``, ``gt (s*h, s*w, 3)`` the aligned, colour-matched telephoto,
        ``ref (s*rh, s*rw, 3)`` its centre crop over the LR box ``ref_box`` (``crops.reference_box``),
        ``mask (s*h, s*w)`` bool validity of ``gt`` after trimming, ``flow (h0, w0, 2)`` LR-grid flow
        before trimming, ``crop_box`` the LR box in the short-focus image (before trimming),
        ``trim`` and ``colour`` (a ``ColourFit``).
    """
    check_rgb("short", short)
    check_rgb("tele", tele)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    scale = int(scale)
    short_f, tele_f = to_float(short), to_float(tele)
    crop_box = central_box(short_f.shape[0], short_f.shape[1], focal_ratio or 1.0 / scale)
    check_pair_geometry(short_f.shape, tele_f.shape, crop_box, scale)
    lr = short_f[crop_box[0] : crop_box[1], crop_box[2] : crop_box[3]]
    h, w = lr.shape[:2]
    tele_hr = resize_tele(tele_f, h, w, scale)
    tele_lr = cv2.resize(tele_hr, (w, h), interpolation=cv2.INTER_AREA)
    flow = estimate_flow(lr, tele_lr)
    warped, valid = warp_with_flow(tele_hr, flow, scale)

    t = smallest_valid_trim(valid, scale) if trim is None else int(trim)
    if t < 0 or 4 * t > min(h, w):
        raise ValueError(
            f"alignment leaves too little valid area: a border trim of {t} LR pixels (of a {h}x{w} crop) would be "
            f"{'needed' if trim is None else 'applied'}; at most {min(h, w) // 4} is allowed "
            f"(does the telephoto show the centre of the short-focus image?)"
        )
    lr = lr[t : h - t, t : w - t]
    hs, ws = lr.shape[:2]
    st = scale * t
    warped, valid = (
        warped[st : st + scale * hs, st : st + scale * ws],
        valid[st : st + scale * hs, st : st + scale * ws],
    )

    lr_up = np.clip(
        cv2.resize(lr, (scale * ws, scale * hs), interpolation=cv2.INTER_CUBIC), 0.0, 1.0
    )
    gt, colour = match_colour(warped, lr_up, valid, ignore_fraction)
    gt[~valid] = 0.0
    ref_box = reference_box(hs, ws, scale)
    y0, y1, x0, x1 = scale_box(ref_box, scale)
    return {
        "lr": np.ascontiguousarray(lr),
        "gt": gt,
        "ref": np.ascontiguousarray(gt[y0:y1, x0:x1]),
        "ref_box": ref_box,
        "mask": valid,
        "flow": flow,
        "crop_box": crop_box,
        "trim": t,
        "colour": colour,
    }


def list_short_tele_pairs(root: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``(name, short_path, tele_path)`` for a folder ``root/short/NAME.ext`` + ``root/tele/NAME.ext``.

    Files are matched by name without extension; a short-focus image without a telephoto (or the
    reverse) is an error naming it.
    """
    root = os.fspath(root)
    dirs = {}
    for sub in ("short", "tele"):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            raise FileNotFoundError(
                f"folder not found: {d} (expected {root}/short/ and {root}/tele/ with matching names)"
            )
        dirs[sub] = {
            os.path.splitext(f)[0]: os.path.join(d, f)
            for f in sorted(os.listdir(d))
            if is_image_file(f)
        }
    shorts, teles = dirs["short"], dirs["tele"]
    if not shorts:
        raise FileNotFoundError(f"no images in {os.path.join(root, 'short')}")
    unmatched = sorted(set(shorts) ^ set(teles))
    if unmatched:
        raise FileNotFoundError(
            f"images without a partner in {root}/short and {root}/tele: {', '.join(unmatched[:5])}"
        )
    return [(name, shorts[name], teles[name]) for name in sorted(shorts)]


def prepare_folder(
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    scale: int,
    split: str = "train",
    focal_ratio: float | None = None,
) -> list[dict]:
    """Prepare every pair of ``src_root/{short,tele}`` into the Nikon/CameraFusion layout.

    Writes ``dst_root/{split}_LR/NAME_x1.png`` and ``dst_root/{split}_HR/NAME_x{scale}.png`` (the
    aligned, colour-matched telephoto) and returns one record per pair (name, sizes, trim, colour fit).
    """
    records = []
    for name, short_path, tele_path in list_short_tele_pairs(src_root):
        out = prepare_pair(read_rgb(short_path), read_rgb(tele_path), scale, focal_ratio)
        write_rgb(os.path.join(dst_root, f"{split}_LR", f"{name}_x1.png"), out["lr"])
        write_rgb(os.path.join(dst_root, f"{split}_HR", f"{name}_x{scale}.png"), out["gt"])
        records.append(
            {
                "name": name,
                "lr_size": out["lr"].shape[:2],
                "trim": out["trim"],
                "colour": out["colour"],
            }
        )
    return records
