"""Evaluate a folder of SR outputs against a folder of ground truths (``dzsr eval``).

Each ground-truth image ``gt_dir/NAME.ext`` is paired with ``sr_dir/NAME.*`` (same file name, or
the same name with another image extension). Rows hold ``name`` and the ``metrics.image_metrics``
keys, which name their settings (``ssim_y_corner_area``: SSIM on the luma, area-weighted corner);
``summarize`` appends the mean row named ``mean``; ``format_table`` turns the keys into headers
(``Corner SSIM (Y, area-weighted)``). ``write_csv`` replaces an existing file only with a complete
new one.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from .data.imageio import is_image_file, read_rgb
from .metrics import LPIPS, image_metrics
from .outputs import write_bytes

DIGITS = {"psnr": 2, "ssim": 4, "lpips": 3}


def _find_sr(sr_dir: str, gt_name: str) -> str:
    exact = os.path.join(sr_dir, gt_name)
    if os.path.isfile(exact):
        return exact
    stem = os.path.splitext(gt_name)[0]
    for fname in sorted(os.listdir(sr_dir)):
        if is_image_file(fname) and os.path.splitext(fname)[0] == stem:
            return os.path.join(sr_dir, fname)
    raise FileNotFoundError(
        f"no SR image for ground truth {gt_name} in {sr_dir} (expected {exact})"
    )


def _as_float64(img: np.ndarray) -> np.ndarray:
    """Stored 8- or 16-bit image -> float64 in [0, 1], exactly."""
    return img.astype(np.float64) / float(np.iinfo(img.dtype).max)


def evaluate_folder(
    sr_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    scale: int,
    lpips: LPIPS | None = None,
    corner_weighting: str = "plain",
    y_channel: bool = False,
) -> list[dict]:
    """One row per ground-truth image: ``name`` and the ``metrics.image_metrics`` keys for these
    settings (``psnr``, ``ssim``, ``psnr_corner``, ``ssim_corner`` by default; ``lpips``,
    ``lpips_corner`` when an LPIPS model is given), computed on the images scaled to [0, 1]."""
    sr_dir, gt_dir = os.fspath(sr_dir), os.fspath(gt_dir)
    for d in (sr_dir, gt_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"folder not found: {d}")
    gt_names = sorted(f for f in os.listdir(gt_dir) if is_image_file(f))
    if not gt_names:
        raise FileNotFoundError(f"no images in {gt_dir}")
    rows = []
    for name in gt_names:
        sr_path = _find_sr(sr_dir, name)
        sr, gt = read_rgb(sr_path), read_rgb(os.path.join(gt_dir, name))
        if sr.shape != gt.shape:
            raise ValueError(
                f"{sr_path} is {sr.shape[0]}x{sr.shape[1]} but its ground truth "
                f"{os.path.join(gt_dir, name)} is {gt.shape[0]}x{gt.shape[1]}"
            )
        values = image_metrics(
            _as_float64(sr), _as_float64(gt), scale, lpips, corner_weighting, y_channel
        )
        rows.append({"name": name, **values})
    return rows


def _metric_keys(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k != "name"]


def summarize(rows: list[dict]) -> list[dict]:
    """``rows`` plus a final ``mean`` row (the per-image mean of each metric, PSNR included)."""
    keys = _metric_keys(rows)
    mean = {"name": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
    return [*rows, mean]


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write ``rows`` (name + metric columns) as CSV atomically (``dzsr.outputs.atomic_write``)."""
    keys = ["name", *_metric_keys(rows)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in keys})
    write_bytes(path, text.getvalue().encode())


def column_header(key: str) -> str:
    """``ssim_y_corner_area`` -> ``Corner SSIM (Y, area-weighted)``; ``psnr`` -> ``Full PSNR``."""
    metric, *settings = key.split("_")
    notes = [note for flag, note in (("y", "Y"), ("area", "area-weighted")) if flag in settings]
    region = "Corner" if "corner" in settings else "Full"
    return f"{region} {metric.upper()}" + (f" ({', '.join(notes)})" if notes else "")


def format_table(rows: list[dict]) -> str:
    """A markdown table: Full-Image then Corner-Image PSNR (dB, 2 d.p.), SSIM (4), LPIPS (3), the
    headers naming the settings (``column_header``)."""
    keys = _metric_keys(rows)

    def fmt(k: str, v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.{DIGITS[k.split('_')[0]]}f}"

    lines = [
        "| image | " + " | ".join(column_header(k) for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {r['name']} | " + " | ".join(fmt(k, r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
