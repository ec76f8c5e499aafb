"""Benchmark: data pipeline and evaluation costs at the authors' Nikon test size.

Cases (synthetic textured images; LR 687x1111, HR 2748x4444 as the authors' real Nikon test image):
  batch        one x4 training batch from ``TrainPatches`` (16 items: random 48x48 LR patch, GT,
               flips, reference crop, pseudo-LR noise map) in one process = the work per batch a
               DataLoader worker does; compare with the training step time (bench_model.py);
  prepare      ``prepare_pair`` on a 2748x4444 short-focus + 2748x4444 telephoto capture (focal
               crop, DIS flow, warp, colour match);
  ssim         our SSIM vs ``skimage.metrics.structural_similarity`` (same settings, same value)
               on one HR-size image pair, interleaved;
  metrics      ``image_metrics`` Full + Corner PSNR/SSIM of one HR-size pair, without and with LPIPS
               (random weights; the cost does not depend on the weights).
Time: interleaved median after a warm-up; peak memory: child-process RSS above a child that builds
the same inputs (benchmarks/_harness.py).

    python -m benchmarks.bench_data [--quick] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import cv2
import numpy as np

from benchmarks import _harness

FULL = (687, 1111)
QUICK = (172, 278)


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return np.rint(255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _hr_pair(lr_h: int, lr_w: int):
    gt = _texture(4 * lr_h, 4 * lr_w, 0)
    noise = np.random.default_rng(1).integers(-6, 7, gt.shape)
    return np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8), gt


def make_batch(lr_h: int, lr_w: int, batch: int = 16):
    from dzsr.data import DualZoomDataset, TrainPatches, write_rgb

    root = tempfile.mkdtemp(prefix="dzsr_bench_")
    gt = _texture(4 * lr_h, 4 * lr_w, 0)
    write_rgb(os.path.join(root, "train_HR", "DSC_0001_x4.png"), gt)
    write_rgb(
        os.path.join(root, "train_LR", "DSC_0001_x1.png"),
        cv2.resize(gt, (lr_w, lr_h), interpolation=cv2.INTER_AREA),
    )
    patches = TrainPatches(DualZoomDataset(root, "train", 4), patch_size=48, length=1 << 30, seed=0)
    shutil.rmtree(root)  # the dataset holds the decoded images in memory
    state = {"next": 0}

    def run():
        start = state["next"]
        state["next"] += batch
        return [patches[i] for i in range(start, start + batch)]

    return run


def make_prepare(lr_h: int, lr_w: int):
    from dzsr.data import prepare_pair

    scene = _texture(4 * lr_h, 4 * lr_w, 2)
    tele = np.roll(scene, (6, -9), axis=(0, 1))
    lr = cv2.resize(scene, (lr_w, lr_h), interpolation=cv2.INTER_AREA)
    short = cv2.copyMakeBorder(
        lr, 3 * lr_h // 2, 3 * lr_h // 2, 3 * lr_w // 2, 3 * lr_w // 2, cv2.BORDER_REFLECT
    )
    return lambda: prepare_pair(short, tele, 4)


def make_ssim(lr_h: int, lr_w: int, impl: str):
    from skimage.metrics import structural_similarity

    from dzsr.metrics import ssim

    sr, gt = (x.astype(np.float64) / 255 for x in _hr_pair(lr_h, lr_w))
    if impl == "skimage":
        return lambda: structural_similarity(
            sr, gt, win_size=11, gaussian_weights=True, data_range=1.0, channel_axis=-1
        )
    return lambda: ssim(sr, gt)


def make_metrics(lr_h: int, lr_w: int, lpips: bool):
    from dzsr.metrics import LPIPS, image_metrics

    sr, gt = _hr_pair(lr_h, lr_w)
    model = LPIPS() if lpips else None
    return lambda: image_metrics(sr, gt, 4, model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"LR {QUICK[0]}x{QUICK[1]} instead of {FULL[0]}x{FULL[1]}",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the child-process memory measurements"
    )
    args = parser.parse_args()
    lr_h, lr_w = QUICK if args.quick else FULL
    size = {"lr_h": lr_h, "lr_w": lr_w}
    cases = {
        "batch (16 x LR 48, x4)": ("benchmarks.bench_data:make_batch", size),
        "prepare_pair": ("benchmarks.bench_data:make_prepare", size),
        "SSIM, ours": ("benchmarks.bench_data:make_ssim", {**size, "impl": "ours"}),
        "SSIM, skimage": ("benchmarks.bench_data:make_ssim", {**size, "impl": "skimage"}),
        "image_metrics PSNR+SSIM": ("benchmarks.bench_data:make_metrics", {**size, "lpips": False}),
        "image_metrics +LPIPS": ("benchmarks.bench_data:make_metrics", {**size, "lpips": True}),
    }
    thunks = {name: _harness.build(case, kw) for name, (case, kw) in cases.items()}
    times = _harness.time_interleaved(thunks, reps=args.reps, warmup=1)
    rows = []
    for name, (case, kw) in cases.items():
        mem = "-" if args.no_memory else _harness.fmt_bytes(_harness.peak_cpu_memory(case, kw))
        rows.append([name, _harness.fmt_time(times[name]), mem])
    print(_harness.machine_line())
    print(f"LR {lr_h}x{lr_w}, HR {4 * lr_h}x{4 * lr_w}")
    print(_harness.markdown_table(["case", "median time", "peak memory above inputs"], rows))


if __name__ == "__main__":
    main()
