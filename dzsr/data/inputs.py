"""Model inputs from a short-focus and a telephoto image (``dzsr sr``, ``dzsr demo``).

The LR is the whole short-focus image, as the authors' test does (``--chop --full_res``: the whole
LR image, the telephoto covering its centre 1/scale); the telephoto is aligned onto the short-focus
focal-ratio centre crop with ``prepare_pair`` (DIS flow + colour match) and pasted there, and also
serves, padded or cropped to the LR size, as the matching reference. ``align="auto"`` first
measures the telephoto's ``residual_motion``: an already aligned telephoto (such as the centre of
an aligned ground truth, the authors' test setting) is only resized, not warped, trimmed or
colour-matched. ``region="centre"`` instead
super-resolves only that centre crop (the training configuration, where the aligned telephoto is
the ground truth).

Not exported by ``dzsr.data``: it depends on the model's minimum input size, and the rest of the
package does not import the models.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.selfdzsr import MIN_LR_SIZE
from .crops import central_box, reference_box, scale_box
from .imageio import to_float, to_tensor
from .prepare import check_pair_geometry, prepare_pair, residual_motion, resize_tele

MIN_FLOW_SIZE = 12  # DIS optical flow's smallest image side (the focal-ratio crop's)
ALIGN_MODES = ("auto", "always", "never")


def fit_to_size(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop and/or edge-pad an HWC image to ``height x width``."""
    h, w = img.shape[:2]
    y0, x0 = max(0, (h - height) // 2), max(0, (w - width) // 2)
    img = img[y0 : y0 + min(h, height), x0 : x0 + min(w, width)]
    ph, pw = height - img.shape[0], width - img.shape[1]
    return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")


def _batch(img: np.ndarray) -> torch.Tensor:
    """HWC image -> (1,3,H,W) float32."""
    return to_tensor(img).unsqueeze(0)


def prepare_inputs(
    short: np.ndarray,
    tele: np.ndarray,
    scale: int,
    region: str = "full",
    align: str = "auto",
    focal_ratio: float | None = None,
) -> dict:
    """Model inputs from a short-focus and a telephoto image (HWC, uint8/uint16/float).

    region ``full``: lr = the whole short-focus image; the telephoto, aligned onto its focal-ratio
    centre crop, is pasted there and (fitted to the LR size) is the matching reference.
    region ``centre``: lr = that centre crop; ref/paste = the centre 1/scale of the aligned
    telephoto (the dataset convention, where the aligned telephoto is the ground truth, returned as
    ``gt``).
    align ``never``: the telephoto already shows exactly the centre crop; it is only resized.
    ``always``: aligned with ``prepare_pair``. ``auto``: ``never`` when ``residual_motion`` says
    the telephoto is aligned, else ``always``.
    Returns (1,3,·,·) float32 tensors ``lr``, ``ref``, ``paste_ref``, an int64 ``paste_box`` (1,4),
    ``box``, the paste box as a tuple (y0, y1, x0, x1) in LR pixels, and ``alignment``, a line
    saying what was done (with the measured motion under ``auto``).
    """
    if region not in ("full", "centre"):
        raise ValueError(f"region must be 'full' or 'centre', got {region!r}")
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    short_f, tele_f = to_float(short), to_float(tele)
    need = max(MIN_LR_SIZE, MIN_FLOW_SIZE) * scale
    if min(short_f.shape[:2]) < need:
        raise ValueError(
            f"short-focus image is {short_f.shape[0]}x{short_f.shape[1]}: at least "
            f"{need}x{need} is needed at x{scale} (its 1/{scale} centre crop must be "
            f"{need // scale} px or more)"
        )
    note = ""
    if align == "auto":
        motion = residual_motion(short_f, tele_f, scale, focal_ratio)
        align = "never" if motion.aligned else "always"
        note = f" ({motion})"
    if align == "always":
        pair = prepare_pair(short_f, tele_f, scale, focal_ratio)
        (cy0, cy1, cx0, cx1), t = pair["crop_box"], pair["trim"]
        box, aligned, centre_lr = (cy0 + t, cy1 - t, cx0 + t, cx1 - t), pair["gt"], pair["lr"]
        note = f"telephoto aligned: DIS flow warp, colour match, trim {t}" + note
    else:
        box = central_box(short_f.shape[0], short_f.shape[1], focal_ratio or 1.0 / scale)
        check_pair_geometry(short_f.shape, tele_f.shape, box, scale)
        aligned = resize_tele(tele_f, box[1] - box[0], box[3] - box[2], scale)
        centre_lr = short_f[box[0] : box[1], box[2] : box[3]]
        note = "telephoto used as it is (already aligned: only resized)" + note
    if region == "centre":
        h, w = centre_lr.shape[:2]
        rbox = reference_box(h, w, scale)
        y0, y1, x0, x1 = scale_box(rbox, scale)
        ref = aligned[y0:y1, x0:x1]
        return {
            "lr": _batch(centre_lr),
            "ref": _batch(fit_to_size(ref, h, w)),
            "paste_ref": _batch(ref),
            "paste_box": torch.tensor([rbox]),
            "box": rbox,
            "gt": _batch(aligned),
            "alignment": note,
        }
    h, w = short_f.shape[:2]
    return {
        "lr": _batch(short_f),
        "ref": _batch(fit_to_size(aligned, h, w)),
        "paste_ref": _batch(aligned),
        "paste_box": torch.tensor([box]),
        "box": box,
        "alignment": note,
    }
