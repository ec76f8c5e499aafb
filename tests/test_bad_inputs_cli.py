"""Every command ends bad input with one line: ``dzsr <command>: error: ...`` naming the argument or
file, exit status 2, no traceback, and no file changed (every pre-existing file hashed before and
after, no new file left). Most cases run in-process through ``dzsr.cli.main`` (stderr captured at the
file-descriptor level, so OpenCV's or libjpeg's own messages would count as lines); a few through the
real process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

import dzsr.outputs
from dzsr.checkpoint import save_inference_checkpoint, to_official
from dzsr.cli import EXIT_ERROR, main
from dzsr.data import write_rgb
from dzsr.models import SelfDZSR


def _png(path, h, w, seed=0):
    write_rgb(path, np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8))


def _truncated(path, ext, seed=0):
    full = str(path) + ".full" + ext
    _png(full, 64, 64, seed)
    data = open(full, "rb").read()
    os.remove(full)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


class _Thing:
    """A pickled Python object: not loadable weights-only."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs for every case: images, damaged checkpoints and configs, folders."""
    w = tmp_path_factory.mktemp("world")
    _png(w / "short.png", 96, 96, 1)
    _png(w / "tele.png", 96, 96, 2)
    _png(w / "tiny.png", 6, 6)
    torch.manual_seed(0)
    save_inference_checkpoint(w / "x4.pt", SelfDZSR(4))
    data = (w / "x4.pt").read_bytes()
    files = {
        "empty.pt": b"",
        "trunc.pt": data[: len(data) // 2],
        "rand.pt": np.random.default_rng(0).bytes(2000),
        "text.pt": b"weights\n",
        "broken.png": b"\x89PNG not really",
        "empty.png": b"",
        "text.jpg": b"hello",
        "bad.yaml": "a: [1, 2\n",
        "list.yaml": "- a\n- b\n",
        "empty.yaml": "",
        "plain": "a regular file",
    }
    for name, content in files.items():
        (w / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tif"):
        _truncated(w / f"trunc{ext}", ext)
    torch.save([1, 2], w / "list.pt")
    torch.save({"a": 1}, w / "nodict.pt")
    torch.save({"a": _Thing()}, w / "obj.pt")
    torch.save(
        {"format": "dzsr-checkpoint", "version": 1, "config": {"scale": 5}, "state_dict": {}},
        w / "badcfg.pt",
    )
    torch.save(
        {"format": "dzsr-checkpoint", "version": 99, "config": {"scale": 4}, "state_dict": {}},
        w / "future.pt",
    )
    torch.save({"foo.weight": torch.zeros(1)}, w / "official_noup.pt")
    torch.save({"up.0.0.weight": torch.zeros(256, 64, 3, 3)}, w / "official_small.pt")
    safetensors.torch.save_file({"w": torch.zeros(2)}, w / "nometa.safetensors")
    save_inference_checkpoint(w / "x4.safetensors", SelfDZSR(4))
    (w / "trunc.safetensors").write_bytes((w / "x4.safetensors").read_bytes()[:-1000])
    x4 = SelfDZSR(4).restoration
    torch.save(
        {"state_dict": to_official(x4.state_dict(), "restoration", x4)}, w / "official_up.pt"
    )
    for name in ("sr_pairs/short/a.png", "sr_pairs/tele/a.png"):
        os.makedirs((w / name).parent, exist_ok=True)
        _png(w / name, 96, 96)
    for d in (
        "folder.png",
        "ro",
        "sub",
        "dir.csv",
        "run_old",
        "demo_out",
        "demo_dirs/sr.png",
        "ev_gt_empty",
        "pr_empty/short",
        "pr_empty/tele",
        "pr_only_short/short",
    ):
        os.makedirs(w / d)
    os.symlink(w / "short.png", w / "link.png")
    os.link(w / "tele.png", w / "hard.png")
    (w / "run_old" / "last.pt").write_bytes(b"a previous run")
    os.link(w / "x4.pt", w / "demo_out" / "metrics.csv")
    for name, size in (
        ("ev_sr/a.png", 64),
        ("ev_gt/a.png", 64),
        ("ev_gt_b/b.png", 64),
        ("ev_gt_small/a.png", 48),
        ("ev_sr_tiny/a.png", 20),
        ("ev_gt_tiny/a.png", 20),
        ("pr_src/short/a.png", 96),
        ("pr_src/tele/a.png", 96),
        ("pr_unmatched/short/a.png", 96),
        ("pr_unmatched/tele/b.png", 96),
        ("pr_trunc/tele/a.png", 96),
        ("pr_only_short/short/a.png", 96),
    ):
        os.makedirs((w / name).parent, exist_ok=True)
        _png(w / name, size, size)
    os.makedirs(w / "ev_sr_trunc")
    _truncated(w / "ev_sr_trunc" / "a.png", ".png")
    os.makedirs(w / "pr_trunc" / "short")
    _truncated(w / "pr_trunc" / "short" / "a.png", ".png")
    return w


SR = [
    "sr",
    "--short",
    "{w}/short.png",
    "--tele",
    "{w}/tele.png",
    "--ckpt",
    "{w}/x4.pt",
    "--out",
    "{t}/o.png",
]
SR_DIRS = [
    "sr",
    "--short",
    "{w}/sr_pairs/short",
    "--tele",
    "{w}/sr_pairs/tele",
    "--ckpt",
    "{w}/x4.pt",
    "--out",
    "{t}/o",
]
TRAIN = ["train", "--config", "sample_x4", "log.out_dir={t}/run"]
EVAL = ["eval", "--sr", "{w}/ev_sr", "--gt", "{w}/ev_gt", "--scale", "4"]
DEMO = ["demo", "--ckpt", "{w}/x4.pt", "--out", "{t}/demo"]
CONVERT = ["convert", "--ckpt", "{w}/x4.safetensors"]
PREPARE = ["prepare", "--src", "{w}/pr_src", "--dst", "{t}/ds", "--scale", "4"]
BOGUS = {"DZSR_KERNELS_BACKEND": "bogus"}
NO_CUDA = not torch.cuda.is_available()


def _set(base, option, value):
    """``base`` with ``option``'s value replaced (or the option added)."""
    argv = list(base)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    return argv


def _sr(option, value):
    return _set(SR, option, value)


# (id, argv, environment, tags, fragments the error line must contain)
CASES = [
    # ---------------------------------------------------------------- sr: inputs
    ("sr-short-missing", _sr("--short", "{w}/none.png"), {}, (), ("none.png", "not found")),
    ("sr-tele-missing", _sr("--tele", "{w}/none.png"), {}, (), ("none.png", "not found")),
    (
        "sr-short-undecodable",
        _sr("--short", "{w}/broken.png"),
        {},
        (),
        ("broken.png", "cannot read image"),
    ),
    ("sr-short-empty", _sr("--short", "{w}/empty.png"), {}, (), ("empty.png", "empty")),
    ("sr-short-text", _sr("--short", "{w}/text.jpg"), {}, (), ("text.jpg", "cannot read image")),
    (
        "sr-short-folder",
        _sr("--short", "{w}/folder.png"),
        {},
        (),
        ("folder.png", "is a folder but --tele"),
    ),
    ("sr-short-checkpoint", _sr("--short", "{w}/x4.pt"), {}, (), ("x4.pt", "cannot read image")),
    *[
        (f"sr-short-truncated{ext}", _sr("--short", f"{{w}}/trunc{ext}"), {}, (), (f"trunc{ext}",))
        for ext in (".jpg", ".png", ".webp", ".bmp", ".tif")
    ],
    ("sr-tele-truncated", _sr("--tele", "{w}/trunc.jpg"), {}, (), ("trunc.jpg", "truncated")),
    ("sr-short-tiny", _sr("--short", "{w}/tiny.png"), {}, (), ("short-focus image is 6x6",)),
    # ---------------------------------------------------------------- sr: the output
    ("sr-out-is-short", _sr("--out", "{w}/short.png"), {}, (), ("--out", "is the input file")),
    ("sr-out-is-tele", _sr("--out", "{w}/tele.png"), {}, (), ("--out", "is the input file")),
    (
        "sr-out-symlink-to-short",
        _sr("--out", "{w}/link.png"),
        {},
        (),
        ("link.png", "is the input file"),
    ),
    (
        "sr-out-hard-link-to-tele",
        _sr("--out", "{w}/hard.png"),
        {},
        (),
        ("hard.png", "is the input file"),
    ),
    ("sr-out-dotdot-short", _sr("--out", "{w}/sub/../short.png"), {}, (), ("is the input file",)),
    ("sr-out-no-extension", _sr("--out", "{t}/o"), {}, (), ("--out", "no file extension")),
    ("sr-out-unknown-extension", _sr("--out", "{t}/o.xyz"), {}, (), ("--out", "'.xyz'")),
    ("sr-out-text-extension", _sr("--out", "{t}/o.txt"), {}, (), ("--out", "'.txt'")),
    ("sr-out-checkpoint-extension", _sr("--out", "{w}/x4.pt"), {}, (), ("--out", "'.pt'")),
    ("sr-out-is-folder", _sr("--out", "{w}/folder.png"), {}, (), ("--out", "is a folder")),
    (
        "sr-out-under-file",
        _sr("--out", "{w}/plain/o.png"),
        {},
        (),
        ("--out", "is a file, not a folder"),
    ),
    (
        "sr-out-deep-under-file",
        _sr("--out", "{w}/plain/a/b/o.png"),
        {},
        (),
        ("--out", "is a file, not a folder"),
    ),
    ("sr-out-read-only", _sr("--out", "{w}/ro/o.png"), {}, ("ro",), ("--out", "not writable")),
    (
        "sr-out-read-only-new-sub",
        _sr("--out", "{w}/ro/new/o.png"),
        {},
        ("ro",),
        ("--out", "not writable"),
    ),
    ("sr-out-empty", _sr("--out", ""), {}, (), ("--out", "empty output path")),
    # ---------------------------------------------------------------- sr: checkpoints
    ("sr-ckpt-missing", _sr("--ckpt", "{w}/none.pt"), {}, (), ("none.pt", "not found")),
    ("sr-ckpt-empty", _sr("--ckpt", "{w}/empty.pt"), {}, (), ("empty.pt", "empty")),
    ("sr-ckpt-truncated", _sr("--ckpt", "{w}/trunc.pt"), {}, (), ("trunc.pt", "truncated")),
    ("sr-ckpt-random", _sr("--ckpt", "{w}/rand.pt"), {}, (), ("rand.pt", "not a PyTorch")),
    ("sr-ckpt-text", _sr("--ckpt", "{w}/text.pt"), {}, (), ("text.pt", "not a PyTorch")),
    ("sr-ckpt-image", _sr("--ckpt", "{w}/short.png"), {}, (), ("short.png", "not a PyTorch")),
    ("sr-ckpt-folder", _sr("--ckpt", "{w}/sub"), {}, (), ("sub", "not found")),
    ("sr-ckpt-python-object", _sr("--ckpt", "{w}/obj.pt"), {}, (), ("obj.pt", "Python objects")),
    ("sr-ckpt-list", _sr("--ckpt", "{w}/list.pt"), {}, (), ("state dict", "list")),
    (
        "sr-ckpt-safetensors-no-metadata",
        _sr("--ckpt", "{w}/nometa.safetensors"),
        {},
        (),
        ("nometa.safetensors", "not a dzsr checkpoint", "no format entry"),
    ),
    (
        "sr-ckpt-safetensors-truncated",
        _sr("--ckpt", "{w}/trunc.safetensors"),
        {},
        (),
        ("trunc.safetensors", "truncated or damaged safetensors"),
    ),
    ("sr-ckpt-no-tensors", _sr("--ckpt", "{w}/nodict.pt"), {}, (), ("named tensors",)),
    ("sr-ckpt-bad-config", _sr("--ckpt", "{w}/badcfg.pt"), {}, (), ("badcfg.pt", "damaged")),
    ("sr-ckpt-future-version", _sr("--ckpt", "{w}/future.pt"), {}, (), ("future.pt", "version 99")),
    (
        "sr-ckpt-official-not-refsr",
        _sr("--ckpt", "{w}/official_noup.pt"),
        {},
        (),
        ("up.0.0.weight",),
    ),
    ("sr-ckpt-official-no-extractor", _sr("--ckpt", "{w}/official_up.pt"), {}, (), ("extractor",)),
    (
        "sr-ckpt-official-mismatch",
        [*_sr("--ckpt", "{w}/official_small.pt"), "--extractor", "{w}/x4.pt"],
        {},
        (),
        ("official_small.pt", "does not match"),
    ),
    (
        "sr-extractor-missing",
        [*_sr("--ckpt", "{w}/official_up.pt"), "--extractor", "{w}/none.pth"],
        {},
        (),
        ("none.pth", "not found"),
    ),
    (
        "sr-extractor-random",
        [*_sr("--ckpt", "{w}/official_up.pt"), "--extractor", "{w}/rand.pt"],
        {},
        (),
        ("rand.pt", "not a PyTorch"),
    ),
    ("sr-scale-mismatch", [*SR, "--scale", "2"], {}, (), ("scale x4, not x2",)),
    # ---------------------------------------------------------------- sr: arguments, device, backend
    ("sr-scale-invalid", [*SR, "--scale", "5"], {}, (), ("--scale", "invalid choice")),
    ("sr-tile-negative", [*SR, "--tile", "-3"], {}, (), ("--tile",)),
    ("sr-tile-not-int", [*SR, "--tile", "abc"], {}, (), ("--tile", "invalid int")),
    ("sr-region-invalid", [*SR, "--region", "middle"], {}, (), ("--region", "invalid choice")),
    ("sr-align-invalid", [*SR, "--align", "yes"], {}, (), ("--align", "invalid choice")),
    (
        "sr-align-and-no-align",
        [*SR, "--align", "always", "--no-align"],
        {},
        (),
        ("--no-align", "not allowed with argument --align"),
    ),
    ("sr-focal-ratio-not-float", [*SR, "--focal-ratio", "abc"], {}, (), ("--focal-ratio",)),
    ("sr-missing-out", SR[:-2], {}, (), ("--out", "required")),
    ("sr-missing-short", SR[:1] + SR[3:], {}, (), ("--short", "required")),
    ("sr-unknown-option", [*SR, "--bogus"], {}, (), ("unrecognized arguments: --bogus",)),
    ("sr-device-unknown", [*SR, "--device", "foo"], {}, (), ("--device", "'foo'")),
    ("sr-device-mps", [*SR, "--device", "mps"], {}, (), ("--device", "'mps'")),
    ("sr-device-no-such-gpu", [*SR, "--device", "cuda:99"], {}, (), ("--device", "cuda:99")),
    *(
        [
            (
                "sr-device-cuda-without-gpu",
                [*SR, "--device", "cuda"],
                {},
                (),
                ("--device", "CUDA is not available"),
            )
        ]
        if NO_CUDA
        else []
    ),
    ("sr-backend-unknown", [*SR, "--backend", "foo"], {}, (), ("--backend", "'foo'")),
    (
        "sr-backend-triton-unavailable",
        [*SR, "--backend", "triton"],
        {},
        ("no_interp",),
        ("--backend triton", "cannot run on cpu"),
    ),
    ("sr-env-backend-unknown", SR, BOGUS, (), ("DZSR_KERNELS_BACKEND", "'bogus'")),
    ("sr-env-backend-empty", SR, {"DZSR_KERNELS_BACKEND": ""}, (), ("DZSR_KERNELS_BACKEND", "''")),
    (
        "sr-env-backend-triton-unavailable",
        SR,
        {"DZSR_KERNELS_BACKEND": "triton"},
        ("no_interp",),
        ("DZSR_KERNELS_BACKEND triton", "cannot run on cpu"),
    ),
    ("sr-device-gpu", [*SR, "--device", "gpu"], {}, (), ("--device must be auto, cpu", "'gpu'")),
    (
        "sr-precision-invalid",
        [*SR, "--precision", "half"],
        {},
        (),
        ("--precision", "invalid choice"),
    ),
    (
        "sr-precision-fp16-cpu",
        [*SR, "--precision", "fp16", "--device", "cpu"],
        {},
        (),
        ("--precision fp16", "CUDA"),
    ),
    (
        "sr-compare-unknown-extension",
        [*SR, "--save-compare", "{t}/c.xyz"],
        {},
        (),
        ("--save-compare", "'.xyz'"),
    ),
    (
        "sr-compare-is-out",
        [*SR, "--save-compare", "{t}/o.png"],
        {},
        (),
        ("--save-compare", "also be written"),
    ),
    (
        "sr-compare-is-short",
        [*SR, "--save-compare", "{w}/short.png"],
        {},
        (),
        ("--save-compare", "input file"),
    ),
    (
        "sr-compare-is-folder",
        [*SR, "--save-compare", "{w}/folder.png"],
        {},
        (),
        ("--save-compare", "is a folder"),
    ),
    # ---------------------------------------------------------------- sr: folder mode
    (
        "sr-folder-tele-file",
        _set(SR_DIRS, "--tele", "{w}/tele.png"),
        {},
        (),
        ("--short", "folder but --tele"),
    ),
    (
        "sr-folder-tele-missing",
        _set(SR_DIRS, "--tele", "{w}/none"),
        {},
        (),
        ("--tele", "none", "not found"),
    ),
    ("sr-folder-out-is-file", _set(SR_DIRS, "--out", "{w}/plain"), {}, (), ("--out", "is a file")),
    (
        "sr-folder-out-read-only",
        _set(SR_DIRS, "--out", "{w}/ro/new"),
        {},
        ("ro",),
        ("--out", "not writable"),
    ),
    (
        "sr-folder-out-is-short",
        _set(SR_DIRS, "--out", "{w}/sr_pairs/short"),
        {},
        (),
        ("a.png", "input file"),
    ),
    (
        "sr-folder-compare-is-file",
        [*SR_DIRS, "--save-compare", "{w}/plain"],
        {},
        (),
        ("--save-compare", "is a file"),
    ),
    (
        "sr-folder-compare-is-out",
        [*SR_DIRS, "--save-compare", "{t}/o"],
        {},
        (),
        ("--save-compare", "also be written"),
    ),
    (
        "sr-folder-no-images",
        _set(_set(SR_DIRS, "--short", "{w}/pr_empty/short"), "--tele", "{w}/pr_empty/tele"),
        {},
        (),
        ("hold no images",),
    ),
    # ---------------------------------------------------------------- train
    (
        "train-config-missing",
        ["train", "--config", "{w}/none.yaml"],
        {},
        (),
        ("none.yaml", "not found"),
    ),
    (
        "train-config-unknown-preset",
        ["train", "--config", "nope"],
        {},
        (),
        ("unknown preset 'nope'",),
    ),
    (
        "train-config-bad-yaml",
        ["train", "--config", "{w}/bad.yaml"],
        {},
        (),
        ("bad.yaml", "cannot parse"),
    ),
    ("train-config-list", ["train", "--config", "{w}/list.yaml"], {}, (), ("list.yaml", "mapping")),
    (
        "train-config-empty",
        ["train", "--config", "{w}/empty.yaml"],
        {},
        (),
        ("empty.yaml", "mapping"),
    ),
    ("train-config-folder", ["train", "--config", "{w}/sub"], {}, (), ("sub",)),
    ("train-config-missing-option", ["train"], {}, (), ("--config", "required")),
    ("train-override-no-equals", [*TRAIN, "train.lr"], {}, (), ("key.subkey=value",)),
    ("train-override-unknown-key", [*TRAIN, "train.lrr=1"], {}, (), ("unknown key train.lrr",)),
    ("train-override-empty-key", [*TRAIN, "=1"], {}, (), ("empty key",)),
    ("train-override-bad-yaml", [*TRAIN, "train.lr=[1"], {}, (), ("train.lr", "cannot parse")),
    (
        "train-out-under-file",
        [*TRAIN, "log.out_dir={w}/plain/run"],
        {},
        (),
        ("log.out_dir", "is a file"),
    ),
    (
        "train-out-read-only",
        [*TRAIN, "log.out_dir={w}/ro/run"],
        {},
        ("ro",),
        ("log.out_dir", "not writable"),
    ),
    (
        "train-out-holds-checkpoint",
        [*TRAIN, "log.out_dir={w}/run_old"],
        {},
        (),
        ("already holds", "last.pt"),
    ),
    ("train-resume-no-last", [*TRAIN, "--resume"], {}, (), ("--resume", "last.pt")),
    ("train-resume-missing", [*TRAIN, "--resume", "{w}/none.pt"], {}, (), ("--resume", "none.pt")),
    (
        "train-resume-and-overwrite",
        [*TRAIN, "--resume", "--overwrite"],
        {},
        (),
        ("--overwrite", "not allowed"),
    ),
    ("train-device-unknown", [*TRAIN, "device=foo"], {}, (), ("device", "'foo'")),
    ("train-device-no-such-gpu", [*TRAIN, "device=cuda:99"], {}, (), ("device", "cuda:99")),
    ("train-env-backend-unknown", TRAIN, BOGUS, (), ("DZSR_KERNELS_BACKEND", "'bogus'")),
    (
        "train-env-backend-triton-unavailable",
        [*TRAIN, "device=cpu"],
        {"DZSR_KERNELS_BACKEND": "triton"},
        ("no_interp",),
        ("DZSR_KERNELS_BACKEND triton", "cannot run on cpu"),
    ),
    ("train-stage-unknown", [*TRAIN, "stage=bogus"], {}, (), ("stage must be",)),
    ("train-data-kind-unknown", [*TRAIN, "data.kind=bogus"], {}, (), ("data.kind",)),
    ("train-data-root-required", [*TRAIN, "data.kind=nikon"], {}, (), ("data.root is required",)),
    (
        "train-data-root-missing",
        [*TRAIN, "data.kind=folder", "data.root={w}/none"],
        {},
        (),
        ("folder not found",),
    ),
    (
        "train-init-checkpoint-missing",
        [*TRAIN, "init.checkpoint={w}/none.pt"],
        {},
        (),
        ("none.pt", "not found"),
    ),
    (
        "train-init-checkpoint-random",
        [*TRAIN, "init.checkpoint={w}/rand.pt"],
        {},
        (),
        ("rand.pt", "not a PyTorch"),
    ),
    (
        "train-init-checkpoint-image",
        [*TRAIN, "init.checkpoint={w}/short.png"],
        {},
        (),
        ("short.png",),
    ),
    (
        "train-init-checkpoint-official",
        [*TRAIN, "init.checkpoint={w}/official_up.pt"],
        {},
        (),
        ("official_up.pt", "not a dzsr checkpoint"),
    ),
    (
        "train-init-kernel-gen-truncated",
        [*TRAIN, "init.kernel_gen={w}/trunc.pt"],
        {},
        (),
        ("trunc.pt", "truncated"),
    ),
    (
        "train-init-extractor-empty",
        [*TRAIN, "init.extractor={w}/empty.pt"],
        {},
        (),
        ("empty.pt", "empty"),
    ),
    ("train-unknown-option", [*TRAIN, "--bogus"], {}, (), ("unrecognized arguments: --bogus",)),
    # ---------------------------------------------------------------- eval
    ("eval-sr-missing", _set(EVAL, "--sr", "{w}/none"), {}, (), ("none", "folder not found")),
    ("eval-gt-missing", _set(EVAL, "--gt", "{w}/none"), {}, (), ("none", "folder not found")),
    ("eval-gt-is-file", _set(EVAL, "--gt", "{w}/plain"), {}, (), ("plain", "folder not found")),
    ("eval-gt-no-images", _set(EVAL, "--gt", "{w}/ev_gt_empty"), {}, (), ("no images",)),
    ("eval-sr-lacks-image", _set(EVAL, "--gt", "{w}/ev_gt_b"), {}, (), ("no SR image", "b.png")),
    ("eval-size-mismatch", _set(EVAL, "--gt", "{w}/ev_gt_small"), {}, (), ("64x64", "48x48")),
    ("eval-sr-truncated", _set(EVAL, "--sr", "{w}/ev_sr_trunc"), {}, (), ("a.png", "truncated")),
    (
        "eval-too-small-for-corners",
        _set(_set(EVAL, "--sr", "{w}/ev_sr_tiny"), "--gt", "{w}/ev_gt_tiny"),
        {},
        (),
        ("too small",),
    ),
    ("eval-csv-no-extension", [*EVAL, "--csv", "{t}/m"], {}, (), ("--csv", "no file extension")),
    ("eval-csv-wrong-extension", [*EVAL, "--csv", "{t}/m.txt"], {}, (), ("--csv", "'.txt'")),
    ("eval-csv-is-image", [*EVAL, "--csv", "{w}/ev_gt/a.png"], {}, (), ("--csv", "'.png'")),
    ("eval-csv-is-folder", [*EVAL, "--csv", "{w}/dir.csv"], {}, (), ("--csv", "is a folder")),
    ("eval-csv-under-file", [*EVAL, "--csv", "{w}/plain/m.csv"], {}, (), ("--csv", "is a file")),
    (
        "eval-csv-read-only",
        [*EVAL, "--csv", "{w}/ro/m.csv"],
        {},
        ("ro",),
        ("--csv", "not writable"),
    ),
    ("eval-csv-empty", [*EVAL, "--csv", ""], {}, (), ("--csv", "empty output path")),
    ("eval-scale-invalid", _set(EVAL, "--scale", "5"), {}, (), ("--scale", "invalid choice")),
    ("eval-scale-missing", EVAL[:-2], {}, (), ("--scale", "required")),
    (
        "eval-corner-weighting-invalid",
        [*EVAL, "--corner-weighting", "mean"],
        {},
        (),
        ("--corner-weighting", "invalid choice", "'mean'"),
    ),
    (
        "eval-alexnet-missing",
        [*EVAL, "--lpips", "--alexnet", "{w}/none.pth"],
        {},
        (),
        ("none.pth", "not found"),
    ),
    (
        "eval-alexnet-random",
        [*EVAL, "--lpips", "--alexnet", "{w}/rand.pt"],
        {},
        (),
        ("rand.pt", "pretrained weights"),
    ),
    (
        "eval-alexnet-empty",
        [*EVAL, "--lpips", "--alexnet", "{w}/empty.pt"],
        {},
        (),
        ("empty.pt", "empty"),
    ),
    ("eval-env-backend-unknown", EVAL, BOGUS, (), ("DZSR_KERNELS_BACKEND",)),
    # ---------------------------------------------------------------- demo
    (
        "demo-out-is-file",
        _set(DEMO, "--out", "{w}/plain"),
        {},
        (),
        ("--out", "is a file, not a folder"),
    ),
    (
        "demo-out-under-file",
        _set(DEMO, "--out", "{w}/plain/demo"),
        {},
        (),
        ("--out", "is a file, not a folder"),
    ),
    ("demo-out-read-only", _set(DEMO, "--out", "{w}/ro"), {}, ("ro",), ("--out", "not writable")),
    (
        "demo-out-would-replace-checkpoint",
        ["demo", "--out", "{w}/demo_out", "--ckpt", "{w}/demo_out/metrics.csv"],
        {},
        (),
        ("metrics.csv", "is the input file"),
    ),
    (
        "demo-out-file-is-folder",
        _set(DEMO, "--out", "{w}/demo_dirs"),
        {},
        (),
        ("sr.png", "is a folder"),
    ),
    ("demo-ckpt-missing", _set(DEMO, "--ckpt", "{w}/none.pt"), {}, (), ("none.pt", "not found")),
    ("demo-ckpt-empty", _set(DEMO, "--ckpt", "{w}/empty.pt"), {}, (), ("empty.pt", "empty")),
    ("demo-ckpt-random", _set(DEMO, "--ckpt", "{w}/rand.pt"), {}, (), ("rand.pt", "not a PyTorch")),
    (
        "demo-ckpt-truncated",
        _set(DEMO, "--ckpt", "{w}/trunc.pt"),
        {},
        (),
        ("trunc.pt", "truncated"),
    ),
    (
        "demo-ckpt-bad-config",
        _set(DEMO, "--ckpt", "{w}/badcfg.pt"),
        {},
        (),
        ("badcfg.pt", "damaged"),
    ),
    ("demo-ckpt-official", _set(DEMO, "--ckpt", "{w}/official_up.pt"), {}, (), ("extractor",)),
    (
        "demo-ckpt-safetensors-no-metadata",
        _set(DEMO, "--ckpt", "{w}/nometa.safetensors"),
        {},
        (),
        ("nometa.safetensors", "no format entry"),
    ),
    (
        "demo-ckpt-safetensors-truncated",
        _set(DEMO, "--ckpt", "{w}/trunc.safetensors"),
        {},
        (),
        ("trunc.safetensors", "truncated"),
    ),
    # ---------------------------------------------------------------- convert
    (
        "convert-out-is-ckpt",
        [*CONVERT, "--out", "{w}/x4.safetensors"],
        {},
        (),
        ("--out", "is the input file"),
    ),
    (
        "convert-out-unknown-extension",
        [*CONVERT, "--out", "{t}/x4.pth"],
        {},
        (),
        ("--out", "'.pth'", ".safetensors"),
    ),
    (
        "convert-out-no-extension",
        [*CONVERT, "--out", "{t}/x4"],
        {},
        (),
        ("--out", "no file extension"),
    ),
    (
        "convert-ckpt-missing",
        ["convert", "--ckpt", "{w}/none.pt", "--out", "{t}/o.safetensors"],
        {},
        (),
        ("none.pt", "not found"),
    ),
    (
        "convert-ckpt-safetensors-no-metadata",
        ["convert", "--ckpt", "{w}/nometa.safetensors", "--out", "{t}/o.safetensors"],
        {},
        (),
        ("nometa.safetensors", "not a dzsr checkpoint"),
    ),
    (
        "convert-ckpt-official-no-extractor",
        ["convert", "--ckpt", "{w}/official_up.pt", "--out", "{t}/o.safetensors"],
        {},
        (),
        ("extractor",),
    ),
    (
        "convert-scale-mismatch",
        [*CONVERT, "--out", "{t}/o.safetensors", "--scale", "2"],
        {},
        (),
        ("scale x4, not x2",),
    ),
    ("convert-out-missing", ["convert", "--ckpt", "{w}/x4.safetensors"], {}, (), ("--out",)),
    ("demo-tile-negative", [*DEMO, "--tile", "-1"], {}, (), ("--tile",)),
    (
        "demo-alexnet-missing",
        [*DEMO, "--lpips", "--alexnet", "{w}/none.pth"],
        {},
        (),
        ("none.pth", "not found"),
    ),
    ("demo-env-backend-unknown", DEMO, BOGUS, (), ("DZSR_KERNELS_BACKEND",)),
    (
        "demo-env-backend-triton-unavailable",
        DEMO,
        {"DZSR_KERNELS_BACKEND": "triton"},
        ("no_interp",),
        ("DZSR_KERNELS_BACKEND triton", "cannot run on cpu"),
    ),
    ("demo-unknown-option", [*DEMO, "--bogus"], {}, (), ("unrecognized arguments",)),
    # ---------------------------------------------------------------- prepare
    (
        "prepare-src-missing",
        _set(PREPARE, "--src", "{w}/none"),
        {},
        (),
        ("none", "folder not found"),
    ),
    (
        "prepare-src-without-tele",
        _set(PREPARE, "--src", "{w}/pr_only_short"),
        {},
        (),
        ("tele", "folder not found"),
    ),
    (
        "prepare-src-unmatched",
        _set(PREPARE, "--src", "{w}/pr_unmatched"),
        {},
        (),
        ("without a partner",),
    ),
    ("prepare-src-no-images", _set(PREPARE, "--src", "{w}/pr_empty"), {}, (), ("no images",)),
    (
        "prepare-src-truncated",
        _set(PREPARE, "--src", "{w}/pr_trunc"),
        {},
        (),
        ("a.png", "truncated"),
    ),
    (
        "prepare-dst-under-file",
        _set(PREPARE, "--dst", "{w}/plain/ds"),
        {},
        (),
        ("--dst", "is a file"),
    ),
    (
        "prepare-dst-read-only",
        _set(PREPARE, "--dst", "{w}/ro/ds"),
        {},
        ("ro",),
        ("--dst", "not writable"),
    ),
    ("prepare-split-path", [*PREPARE, "--split", "a/b"], {}, (), ("--split", "'a/b'")),
    ("prepare-split-empty", [*PREPARE, "--split", ""], {}, (), ("--split",)),
    ("prepare-split-dotdot", [*PREPARE, "--split", ".."], {}, (), ("--split", "'..'")),
    ("prepare-scale-invalid", _set(PREPARE, "--scale", "5"), {}, (), ("--scale", "invalid choice")),
    ("prepare-focal-ratio-not-float", [*PREPARE, "--focal-ratio", "x"], {}, (), ("--focal-ratio",)),
    ("prepare-env-backend-unknown", PREPARE, BOGUS, (), ("DZSR_KERNELS_BACKEND",)),
    # ---------------------------------------------------------------- info
    ("info-env-backend-unknown", ["info"], BOGUS, (), ("DZSR_KERNELS_BACKEND", "'bogus'")),
    ("info-unknown-option", ["info", "--bogus"], {}, (), ("unrecognized arguments: --bogus",)),
]


def test_the_suite_is_large_and_distinct():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({(tuple(c[1]), tuple(c[2].items()), c[3]) for c in CASES}) == len(CASES)


def _snapshot(root) -> dict:
    """{relative path: sha256} of every file (and symlink target) under ``root``."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                out[key] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


def _read_only(monkeypatch, folder):
    real = dzsr.outputs._probe

    def probe(path):
        if os.path.abspath(path).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", path)
        real(path)

    monkeypatch.setattr(dzsr.outputs, "_probe", probe)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line(case, world, tmp_path, monkeypatch, capfd):
    name, argv, env, tags, fragments = case
    argv = [a.format(w=world, t=tmp_path) for a in argv]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "no_interp" in tags:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if "ro" in tags:
        _read_only(monkeypatch, world / "ro")
    before = _snapshot(world)
    capfd.readouterr()
    assert main(argv) == EXIT_ERROR
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dzsr {argv[0]}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.format(w=world, t=tmp_path) in lines[0], (fragment, lines[0])
    assert _snapshot(world) == before
    assert _snapshot(tmp_path) == {}  # nothing written, no temporary file left


@pytest.mark.parametrize(
    "argv,env,fragment",
    [
        (_sr("--short", "{w}/trunc.jpg"), {}, "truncated"),
        (_sr("--short", "{w}/trunc.tif"), {}, "trunc.tif"),
        (["info"], BOGUS, "DZSR_KERNELS_BACKEND"),
        ([*SR, "--scale", "7"], {}, "invalid choice"),
    ],
    ids=["truncated-jpeg", "truncated-tiff", "env-backend", "argparse"],
)
def test_the_real_process_prints_one_line_and_exits_2(argv, env, fragment, world, tmp_path):
    argv = [a.format(w=world, t=tmp_path) for a in argv]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "dzsr.cli", *argv], capture_output=True, text=True, env=full_env
    )
    assert proc.returncode == EXIT_ERROR
    lines = proc.stderr.splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith(f"dzsr {argv[0]}: error: ") and fragment in lines[0]
    ), proc.stderr
    assert not os.listdir(tmp_path)
