"""``dzsr demo``: the shipped x4 checkpoint on the bundled dual-zoom sample (``dzsr.sample``).

For the demo pair (motorcycle: two real cameras) and, with ``held_out``, the held-out photographs,
the whole short-focus image is super-resolved with the telephoto as reference (``dzsr.infer``) and
compared with the ground truth against two baselines: bicubic upsampling, and the same network
without its reference branch (the branch's output replaced by zeros, everything else unchanged).
Metrics (``dzsr.metrics.image_metrics``) are on the clamped float output, Full-Image and
Corner-Image (the corners are where the telephoto does not reach).

Writes ``OUT/sr.png``, ``OUT/side_by_side.png`` (bicubic | ours | reference placed in its footprint
over a dimmed bicubic | ground truth), ``OUT/metrics.csv`` and prints the table. The folder and the
three paths are checked before any work (``check_outputs``) and each file is written atomically.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_model
from .data import to_hwc, to_tensor, write_rgb
from .data.inputs import prepare_inputs
from .evaluate import format_table, write_csv
from .infer import DEFAULT_TILE, super_resolve
from .metrics import image_metrics
from .outputs import check_folder, check_output
from .sample import DEMO, HELD_OUT, load_sample

SCALE = 4
METHODS = ("bicubic", "no reference", "SelfDZSR")
OUTPUTS = ("sr.png", "side_by_side.png", "metrics.csv")


class _ZeroReference(nn.Module):
    """Stands in for the reference branch: contributes zero features."""

    def forward(self, ref, offsets, guide_features, paste_ref=None, paste_box=None):
        return torch.zeros_like(guide_features)


@contextlib.contextmanager
def without_reference(model):
    """Temporarily replace ``model``'s reference branch by zeros."""
    net = model.restoration
    branch = net.reference
    net.reference = _ZeroReference()
    try:
        yield model
    finally:
        net.reference = branch


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """``lr`` (N,C,H,W) -> (N,C,sH,sW): bicubic upsampling (align_corners=False), clamped to
    [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """HWC RGB ``panels`` (H,W_i,3) of one height in [0, 1], left to right with a white (1.0) column
    of ``gap`` pixels between neighbours."""
    h = panels[0].shape[0]
    sep = np.ones((h, gap, 3), np.float32)
    return np.concatenate([x for p in panels for x in (p, sep)][:-1], axis=1)


def reference_panel(bic: np.ndarray, paste_ref: np.ndarray, box, scale: int) -> np.ndarray:
    """A new image: ``bic`` (sH,sW,3) dimmed to 35%, with ``paste_ref`` (s·h,s·w,3) placed at the LR
    ``box`` (y0,y1,x0,x1) times ``scale``: the reference in its footprint."""
    canvas = bic * 0.35
    y0, y1, x0, x1 = (scale * v for v in box)
    canvas[y0:y1, x0:x1] = paste_ref
    return canvas


def check_outputs(out_dir: str | os.PathLike, inputs=()) -> None:
    """``out_dir`` can hold the demo's files, none of which is one of the files ``inputs``."""
    check_folder(out_dir, "--out")
    for name in OUTPUTS:
        check_output(os.path.join(os.fspath(out_dir), name), "--out", inputs=inputs)


def run_demo(
    out_dir: str | os.PathLike,
    checkpoint=None,
    tile: int | None = DEFAULT_TILE,
    held_out: bool = False,
    lpips=None,
) -> list[dict]:
    """Run the demo (module docstring); returns the metric rows."""
    out_dir = os.fspath(out_dir)
    check_outputs(out_dir, (checkpoint,))
    model = load_model(checkpoint, SCALE)
    rows = []
    for name in (DEMO, *HELD_OUT) if held_out else (DEMO,):
        sample = load_sample(name, SCALE)
        x = prepare_inputs(sample["short"], sample["tele"], SCALE)
        sr = super_resolve(
            model, x["lr"], x["ref"], x["paste_ref"], x["paste_box"], tile=tile
        ).clamp(0, 1)
        with torch.no_grad(), without_reference(model):
            plain = model(
                x["lr"], x["ref"], paste_ref=x["paste_ref"], paste_box=x["paste_box"]
            ).sr.clamp(0, 1)
        bic = bicubic(x["lr"], SCALE)
        gt = to_tensor(sample["gt"])
        for method, img in zip(METHODS, (bic, plain, sr)):
            rows.append({"name": f"{name} / {method}", **image_metrics(img[0], gt, SCALE, lpips)})
        if name == DEMO:
            bic_np, sr_np = to_hwc(bic[0]), to_hwc(sr[0])
            write_rgb(os.path.join(out_dir, OUTPUTS[0]), sr_np)
            ref_np = reference_panel(bic_np, to_hwc(x["paste_ref"][0]), x["box"], SCALE)
            write_rgb(
                os.path.join(out_dir, OUTPUTS[1]),
                side_by_side([bic_np, sr_np, ref_np, sample["gt"].astype(np.float32) / 255.0]),
            )
    print(format_table(rows))
    write_csv(rows, os.path.join(out_dir, OUTPUTS[2]))
    print(f"wrote {os.path.join(out_dir, 'sr.png')}, side_by_side.png and metrics.csv in {out_dir}")
    return rows
