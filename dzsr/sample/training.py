"""Training pairs built from bundled pictures, written as a prepared folder (``data.kind=sample``).

Three sources, all deterministic (the same arguments give the same bytes):
  * bundled dual-zoom samples (``builder.load_sample``), used self-supervised: ``prepare_pair``
    aligns the short-focus centre crop to the telephoto, which serves as ground truth;
  * other photographs shipped in ``skimage/data``, either as synthetic captures made with the
    recipe of the held-out samples (``photo_pair``: short = 4x box-down, tele = the centre 1/scale
    of the known-similarity view) prepared the same way, or as whole-frame pairs
    (``photo_frame_pair``: every pixel has exact ground truth, far more data than the telephoto's
    quarter field of view);
  * synthetic dead-leaves pictures (``dzsr.data.dead_leaves``) as whole-frame pairs.
Whole-frame pair of a picture at 4x LR resolution (``frame_pair``): LR = 4x box-down (the bundled
sample's short-focus degradation), GT = the ``4/scale`` box-down, aligned by construction.
The held-out and demo photographs (``HELD_OUT``, ``DEMO``) are never trained on.

All images are uint8 RGB HWC numpy arrays; an LR of ``(h, w, 3)`` has a GT of
``(scale*h, scale*w, 3)``.
"""

from __future__ import annotations

import os

import numpy as np

from ..data import central_box, prepare_pair, write_rgb
from ..data.dead_leaves import dead_leaves
from .builder import (
    DEMO,
    HELD_OUT,
    SAMPLE_NAMES,
    box_down,
    bundled_photo,
    is_bundled_photo,
    load_sample,
    similarity_view,
)

PHOTOS_AS = ("capture", "frame")
SYNTHETIC_SIZE = 512  # side of a dead-leaves picture at the bundled photographs' resolution (4x LR)
LR_FOLDER, HR_FOLDER = "train_LR", "train_HR"


def photo_pair(filename: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic (short, tele) capture of bundled photograph ``filename`` (module docstring):
    short ``(h, w, 3)``, tele ``(h, w, 3)`` at ``scale``/4 of the photograph's resolution."""
    img = bundled_photo(filename)
    gt = box_down(img, 4 // scale)
    y0, y1, x0, x1 = central_box(gt.shape[0], gt.shape[1], 1.0 / scale)
    return box_down(img, 4), np.ascontiguousarray(similarity_view(gt)[y0:y1, x0:x1])


def frame_pair(img: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole-frame ``(lr, gt)`` of uint8 HWC ``img`` (sides multiples of 4): the 4x and the
    ``4/scale`` box-downs."""
    return box_down(img, 4), box_down(img, 4 // scale)


def photo_frame_pair(filename: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``frame_pair`` of bundled photograph ``filename``."""
    return frame_pair(bundled_photo(filename), scale)


def synthetic_frame_pair(index: int, seed: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``frame_pair`` of dead-leaves picture ``index`` (``SYNTHETIC_SIZE`` square), drawn with
    ``numpy.random.default_rng([seed, index])``."""
    return frame_pair(dead_leaves(SYNTHETIC_SIZE, np.random.default_rng([seed, index])), scale)


def _refused(names, reason) -> list[str]:
    return [f"{name} ({why})" for name in names if (why := reason(name))]


def _sample_reason(name: str) -> str | None:
    if name in HELD_OUT:
        return "a held-out photograph"
    if name not in SAMPLE_NAMES:
        return f"not a bundled sample; these are {', '.join(SAMPLE_NAMES)}"
    return None


def _photo_reason(filename: str) -> str | None:
    name = os.path.splitext(filename)[0]
    if name in HELD_OUT or name.startswith(DEMO):
        return "a held-out or demo photograph"
    return None if is_bundled_photo(filename) else "not among scikit-image's bundled photographs"


def sample_data_problems(
    samples, photos, photos_as: str = "capture", synthetic: int = 0, prefix: str = ""
) -> list[tuple[str, str]]:
    """What makes these arguments of ``prepare_sample_data`` unusable: ``[(name, message)]``, at
    most one per argument, each message naming it as ``prefix + argument`` (the config passes
    ``"data."``). Names only; whether a photograph decodes is found when it is read."""
    problems = []
    for arg, names, reason in (
        ("samples", samples, _sample_reason),
        ("photos", photos, _photo_reason),
    ):
        refused = _refused(names, reason)
        if refused:
            message = f"{prefix}{arg}: not for training: {', '.join(refused)}"
            problems.append((prefix + arg, message))
    if photos_as not in PHOTOS_AS:
        problems.append(
            (
                prefix + "photos_as",
                f"{prefix}photos_as must be one of {', '.join(PHOTOS_AS)}, got {photos_as!r}",
            )
        )
    if isinstance(synthetic, bool) or not isinstance(synthetic, int) or synthetic < 0:
        problems.append(
            (
                prefix + "synthetic",
                f"{prefix}synthetic must be a number of dead-leaves "
                f"pictures (an integer >= 0), got {synthetic!r}",
            )
        )
    elif not (samples or photos or synthetic):
        problems.append(
            (
                prefix + "samples",
                f"no training images: give {prefix}samples, {prefix}photos or {prefix}synthetic",
            )
        )
    return problems


def training_pairs(
    samples, scale: int, photos=(), photos_as: str = "capture", synthetic: int = 0, seed: int = 0
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, lr, gt)]`` of the sources in the module docstring, in the order given, dead-leaves
    pictures last (``dead_leaves_000`` ...); ValueError naming the first bad argument."""
    problems = sample_data_problems(samples, photos, photos_as, synthetic)
    if problems:
        raise ValueError(problems[0][1])
    pairs = []
    for name in samples:
        sample = load_sample(name, scale)
        pair = prepare_pair(sample["short"], sample["tele"], scale)
        pairs.append((name, pair["lr"], pair["gt"]))
    for filename in photos:
        if photos_as == "frame":
            lr, gt = photo_frame_pair(filename, scale)
        else:
            pair = prepare_pair(*photo_pair(filename, scale), scale)
            lr, gt = pair["lr"], pair["gt"]
        pairs.append((os.path.splitext(filename)[0], lr, gt))
    for index in range(synthetic):
        pairs.append((f"dead_leaves_{index:03d}", *synthetic_frame_pair(index, seed, scale)))
    return pairs


def prepare_sample_data(
    root: str,
    samples,
    scale: int,
    photos=(),
    photos_as: str = "capture",
    synthetic: int = 0,
    seed: int = 0,
) -> str:
    """Write the ``training_pairs`` as a prepared folder (``DualZoomDataset(root, "train", scale)``
    reads it): ``root/train_LR/NAME_x1.png`` and ``root/train_HR/NAME_x{scale}.png``; PNGs left
    there by an earlier call with other arguments are removed, so the folder holds exactly these
    pairs. Returns ``root``."""
    written = set()
    for name, lr, gt in training_pairs(samples, scale, photos, photos_as, synthetic, seed):
        for folder, file, img in (
            (LR_FOLDER, f"{name}_x1.png", lr),
            (HR_FOLDER, f"{name}_x{scale}.png", gt),
        ):
            write_rgb(os.path.join(root, folder, file), img)
            written.add(os.path.join(folder, file))
    for folder in (LR_FOLDER, HR_FOLDER):
        for file in os.listdir(os.path.join(root, folder)):
            if file.endswith(".png") and os.path.join(folder, file) not in written:
                os.remove(os.path.join(root, folder, file))
    return root
