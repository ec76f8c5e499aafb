"""Deterministic dual-zoom samples built from photographs shipped inside the scikit-image wheel.

The files are read straight from the installed ``skimage/data`` folder (no pooch, no network).
All arithmetic is exact or elementwise float64 numpy, so the bytes are the same on every run.

Common steps, for ``scale`` in (2, 4):
  * the photograph is cropped at the bottom/right to a multiple of 4 pixels: ``H x W``;
  * ``gt`` = the photograph box-averaged by ``4/scale`` (identity at x4): ``(scale*h, scale*w)``,
    with ``h, w = H/4, W/4``;
  * ``short`` = the photograph box-averaged by 4: ``(h, w)`` (the short-focus, wide camera);
  * ``tele`` = an ``(h, w)`` crop, at ``gt`` resolution, of a second view of the scene covering the
    centre ``1/scale`` of the wide field of view (``tele_box``, the centred box of
    ``crops.central_box(scale*h, scale*w, 1/scale)`` on the ``gt`` grid).
Box averages are rounded half to even to uint8.

Second views:
  * ``motorcycle``: the real right camera of the Middlebury stereo pair
    (``motorcycle_left.png`` = first view and ground truth, ``motorcycle_right.png`` = second view),
    processed like the first. The tele crop is moved left by the pair's median disparity over the
    central region (50 px at full size, ``50*scale/4`` on the gt grid, from
    ``motorcycle_disp.npz``),
    like a tele camera whose axis is aligned to the wide one: the content matches the centre of the
    wide view up to the real depth-dependent parallax and the cameras' exposure differences.
  * held-out photographs (astronaut, coffee, chelsea, rocket): a synthetic view, the gt image warped
    by a known similarity about its centre (rotation ``WARP_DEGREES``, zoom ``WARP_ZOOM``, shift
    ``WARP_SHIFT`` (dy, dx) gt pixels) with bilinear interpolation and edge clamping:
    ``view(p) = gt(c + R(p - c) / zoom - shift)``.
Sizes (x4 and x2 share ``short``/``tele``): motorcycle 125x185 (gt 500x740 at x4), astronaut
128x128, coffee 100x150, chelsea 75x112, rocket 106x160 (rocket.jpg is decoded by OpenCV's libjpeg).
"""

from __future__ import annotations

import math
import os
from importlib import resources

import cv2
import numpy as np

from ..data.crops import central_box
from ..data.imageio import write_rgb

DEMO = "motorcycle"
HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket")
SAMPLE_NAMES = (DEMO, *HELD_OUT)
SCALES = (2, 4)
MOTORCYCLE_DISPARITY = 50
WARP_DEGREES, WARP_ZOOM, WARP_SHIFT = 1.5, 1.02, (2.0, -3.0)
_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
}


def is_bundled_photo(filename: str) -> bool:
    """Whether ``filename`` (e.g. ``"camera.png"``) is a file in scikit-image's ``skimage/data``."""
    return resources.files("skimage.data").joinpath(filename).is_file()


def bundled_photo(filename: str) -> np.ndarray:
    """A photograph shipped in skimage/data as uint8 RGB HWC, cropped at the bottom/right to a
    multiple of 4 pixels. Raises FileNotFoundError if scikit-image has no such file, ValueError if
    it cannot be decoded."""
    if not is_bundled_photo(filename):
        raise FileNotFoundError(f"{filename} is not among scikit-image's bundled photographs")
    path = resources.files("skimage.data").joinpath(filename)
    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode scikit-image's bundled {filename}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]


def _photo(key: str) -> np.ndarray:
    return bundled_photo(_FILES[key])


def box_down(img: np.ndarray, factor: int) -> np.ndarray:
    """uint8 HWC ``img`` (H, W multiples of ``factor``) box-averaged by ``factor``, rounded half to
    even: ``(H/factor, W/factor, C)`` uint8 (a copy when ``factor`` is 1)."""
    if factor == 1:
        return img.copy()
    h, w, c = img.shape
    blocks = img.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
    mean = blocks.mean(axis=(1, 3))
    return np.rint(mean).astype(np.uint8)


def similarity_view(img: np.ndarray) -> np.ndarray:
    """uint8 HWC ``img`` seen through the known similarity warp (module docstring), bilinear with
    edge clamping, same shape and dtype."""
    h, w = img.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = math.radians(WARP_DEGREES)
    dy, dx = yy - cy, xx - cx
    sy = cy + (math.cos(t) * dy - math.sin(t) * dx) / WARP_ZOOM - WARP_SHIFT[0]
    sx = cx + (math.sin(t) * dy + math.cos(t) * dx) / WARP_ZOOM - WARP_SHIFT[1]
    sy, sx = np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)
    y0 = np.minimum(np.floor(sy).astype(int), h - 2)
    x0 = np.minimum(np.floor(sx).astype(int), w - 2)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    src = img.astype(np.float64)
    out = (1 - fy) * ((1 - fx) * src[y0, x0] + fx * src[y0, x0 + 1]) + fy * (
        (1 - fx) * src[y0 + 1, x0] + fx * src[y0 + 1, x0 + 1]
    )
    return np.rint(out).astype(np.uint8)


def load_sample(name: str = DEMO, scale: int = 4) -> dict:
    """Build sample ``name`` at ``scale``: uint8 RGB HWC ``short (h, w, 3)``, ``tele (h, w, 3)``,
    ``gt (scale*h, scale*w, 3)``, and ``tele_box`` (the gt-grid box the tele's field of view
    covers)."""
    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLE_NAMES)}")
    if scale not in SCALES:
        raise ValueError(f"sample scale must be one of {SCALES}, got {scale!r}")
    photo = _photo(name)
    gt = box_down(photo, 4 // scale)
    short = box_down(photo, 4)
    box = central_box(gt.shape[0], gt.shape[1], 1.0 / scale)
    y0, y1, x0, x1 = box
    if name == DEMO:
        shift = MOTORCYCLE_DISPARITY * scale // 4
        tele = box_down(_photo("motorcycle_right"), 4 // scale)[y0:y1, x0 - shift : x1 - shift]
    else:
        tele = similarity_view(gt)[y0:y1, x0:x1]
    return {"short": short, "tele": np.ascontiguousarray(tele), "gt": gt, "tele_box": box}


def write_sample(name: str = DEMO, scale: int = 4, directory: str | os.PathLike = ".") -> dict:
    """Write ``short.png``, ``tele.png``, ``gt.png`` of a sample to ``directory``; returns their
    paths."""
    sample = load_sample(name, scale)
    paths = {}
    for key in ("short", "tele", "gt"):
        paths[key] = os.path.join(os.fspath(directory), f"{key}.png")
        write_rgb(paths[key], sample[key])
    return paths
