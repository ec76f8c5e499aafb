"""The dzsr command line: each command runs, and bad input ends in one error line, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_argv import sr_argv

import dzsr.sample
from dzsr.checkpoint import save_checkpoint, save_inference_checkpoint
from dzsr.cli import EXIT_ERROR, main
from dzsr.data import read_rgb, write_rgb
from dzsr.models import SelfDZSR
from dzsr.sample import write_sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = write_sample("motorcycle", 4, root / "sample")
    torch.manual_seed(0)
    save_inference_checkpoint(root / "x4.pt", SelfDZSR(4))
    save_checkpoint(root / "x2.pt", SelfDZSR(2))
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return {"root": root, **paths}


def _fails(capsys, argv, *fragments):
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dzsr {argv[0]}: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


def test_sr_writes_the_whole_image(files, tmp_path, capsys):
    out = tmp_path / "sr.png"
    argv = sr_argv(
        files["short"], files["tele"], out, "--ckpt", files["root"] / "x4.pt", "--scale", "4"
    )
    assert main([*argv, "--tile", "64"]) == 0
    assert "telephoto aligned: DIS flow warp" in capsys.readouterr().out  # --align auto, a raw pair
    short = read_rgb(files["short"])
    assert read_rgb(out).shape == (4 * short.shape[0], 4 * short.shape[1], 3)


def test_sr_errors(files, capsys, tmp_path):
    root, out = files["root"], tmp_path / "o.png"
    short, tele, x4 = files["short"], files["tele"], root / "x4.pt"
    _fails(capsys, sr_argv(root / "nope.png", tele, out, "--ckpt", x4), "nope.png", "not found")
    _fails(
        capsys, sr_argv(root / "broken.png", tele, out, "--ckpt", x4), "broken.png", "cannot read"
    )
    _fails(
        capsys,
        sr_argv(short, tele, out, "--ckpt", root / "x2.pt", "--scale", "4"),
        "scale x2, not x4",
    )
    _fails(capsys, sr_argv(short, tele, out, "--ckpt", root / "missing.pt"), "missing.pt")
    _fails(
        capsys, sr_argv(short, tele, out, "--ckpt", root / "broken.png"), "cannot read checkpoint"
    )
    small_tele = tmp_path / "tele_small.png"
    write_rgb(small_tele, read_rgb(tele)[:30, :45])
    _fails(capsys, sr_argv(short, small_tele, out, "--ckpt", x4), "inconsistent with scale 4")
    tiny = tmp_path / "tiny.png"
    write_rgb(tiny, np.zeros((6, 6, 3), np.uint8))
    _fails(capsys, sr_argv(tiny, tiny, out, "--ckpt", x4))


def test_train_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: False)
    bf16 = ["train.loss=l1sw", "train.sw_precision=bfloat16", "device=cpu"]
    out = f"log.out_dir={tmp_path / 'bf16'}"
    _fails(capsys, ["train", "--config", "sample_x4", out, *bf16], "use train.sw_precision=float32")
    assert not (tmp_path / "bf16").exists()
    _fails(capsys, ["train", "--config", str(tmp_path / "none.yaml")], "none.yaml")
    _fails(capsys, ["train", "--config", "sample_x4", "train.lrr=1"], "unknown key train.lrr")
    _fails(
        capsys,
        ["train", "--config", "nikon_x4", f"log.out_dir={tmp_path}"],
        "data.root is required",
    )
    _fails(
        capsys,
        ["train", "--config", "nikon_x4", f"log.out_dir={tmp_path}", f"data.root={tmp_path}/x"],
        "folder not found",
    )
    _fails(
        capsys, ["train", "--config", "sample_x4", f"log.out_dir={tmp_path}", "--resume"], "last.pt"
    )


def test_prepare_and_eval(files, capsys, tmp_path):
    src = tmp_path / "raw"
    for sub in ("short", "tele"):
        os.makedirs(src / sub)
        write_rgb(src / sub / "moto.png", read_rgb(files[sub]))
    assert (
        main(
            [
                "prepare",
                "--src",
                str(src),
                "--dst",
                str(tmp_path / "ds"),
                "--scale",
                "4",
                "--split",
                "test",
            ]
        )
        == 0
    )
    assert os.path.isfile(tmp_path / "ds" / "test_LR" / "moto_x1.png")
    hr = read_rgb(tmp_path / "ds" / "test_HR" / "moto_x4.png")
    os.makedirs(tmp_path / "sr")
    write_rgb(tmp_path / "sr" / "moto_x4.png", np.clip(hr.astype(int) + 3, 0, 255).astype(np.uint8))
    capsys.readouterr()
    csv = tmp_path / "m.csv"
    assert (
        main(
            [
                "eval",
                "--sr",
                str(tmp_path / "sr"),
                "--gt",
                str(tmp_path / "ds" / "test_HR"),
                "--scale",
                "4",
                "--csv",
                str(csv),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "Corner PSNR" in table and "| mean |" in table
    assert csv.read_text().startswith("name,psnr,ssim")
    _fails(
        capsys,
        ["prepare", "--src", str(tmp_path / "none"), "--dst", str(tmp_path / "d2"), "--scale", "4"],
        "folder not found",
    )
    _fails(
        capsys,
        ["eval", "--sr", str(tmp_path / "none"), "--gt", str(tmp_path / "sr"), "--scale", "4"],
        "folder not found",
    )
    _fails(
        capsys,
        [
            "eval",
            "--sr",
            str(tmp_path / "sr"),
            "--gt",
            str(tmp_path / "ds" / "test_HR"),
            "--scale",
            "4",
            "--lpips",
            "--alexnet",
            str(tmp_path / "alexnet.pth"),
        ],
        "alexnet.pth",
    )


def test_eval_settings_name_their_columns(capsys, tmp_path):
    """--y and --corner-weighting area change the values and say so in the table and CSV header."""
    rng = np.random.default_rng(torch.initial_seed())
    gt = rng.integers(0, 256, (72, 104, 3), dtype=np.uint8)
    write_rgb(tmp_path / "gt" / "a.png", gt)
    sr = np.clip(gt + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    write_rgb(tmp_path / "sr" / "a.png", sr)
    base = ["eval", "--sr", str(tmp_path / "sr"), "--gt", str(tmp_path / "gt"), "--scale", "4"]
    capsys.readouterr()
    assert main(base) == 0
    default = capsys.readouterr().out.splitlines()
    assert default[0] == "| image | Full PSNR | Full SSIM | Corner PSNR | Corner SSIM |"
    csv = tmp_path / "y.csv"
    assert main([*base, "--y", "--corner-weighting", "area", "--csv", str(csv)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == (
        "| image | Full PSNR (Y) | Full SSIM (Y) | Corner PSNR (Y) "
        "| Corner SSIM (Y, area-weighted) |"
    )
    assert csv.read_text().startswith("name,psnr_y,ssim_y,psnr_y_corner,ssim_y_corner_area\n")
    assert table[2] != default[2] and table[2].startswith("| a.png | ")


def test_demo_errors_without_checkpoint(capsys, tmp_path):
    _fails(capsys, ["demo", "--out", str(tmp_path), "--ckpt", str(tmp_path / "none.pt")], "none.pt")


def test_no_traceback_from_the_installed_command(files, tmp_path):
    """The real process: one line on stderr, exit status 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dzsr.cli",
            "sr",
            "--short",
            str(tmp_path / "a.png"),
            "--tele",
            files["tele"],
            "--out",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_ERROR
    assert proc.stderr.strip().splitlines() == [
        f"dzsr sr: error: image file not found: {tmp_path / 'a.png'}"
    ]


@pytest.mark.slow
def test_demo_with_the_shipped_checkpoint(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for method in ("bicubic", "no reference", "SelfDZSR"):
        assert f"motorcycle / {method}" in table
    side = read_rgb(tmp_path / "side_by_side.png")
    sr = read_rgb(tmp_path / "sr.png")
    assert sr.shape == (500, 740, 3) and side.shape == (500, 4 * 740 + 3 * 4, 3)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4


def _documented_table() -> dict:
    """demo_x4.txt's results table: image -> (Full, Corner) PSNR of bicubic, no reference, ours."""
    text = (Path(dzsr.sample.__file__).parent / "demo_x4.txt").read_text()
    lines = text[text.index("`dzsr demo --held-out` with this file") :].splitlines()[2:7]
    table = {}
    for line in lines:
        name, *values = line.replace("/", " ").split()
        table[name] = [float(v) for v in values]
    return table


@pytest.mark.slow
def test_shipped_checkpoint_gives_its_documented_numbers(tmp_path):
    """What README and demo_x4.txt claim of the shipped checkpoint: on every held-out photograph it
    beats bicubic (Full- and Corner-Image) and the no-reference network (Full-Image); and
    demo_x4.txt's table (so README's gains) is what the shipped file gives, to its rounding."""
    from dzsr.demo import run_demo
    from dzsr.sample import HELD_OUT

    rows = {r["name"]: r for r in run_demo(tmp_path, held_out=True)}
    for name in HELD_OUT:
        ours, bic, plain = (rows[f"{name} / {m}"] for m in ("SelfDZSR", "bicubic", "no reference"))
        assert ours["psnr"] > bic["psnr"] and ours["psnr_corner"] > bic["psnr_corner"], name
        assert ours["psnr"] > plain["psnr"], name
    table = _documented_table()
    assert set(table) == {"motorcycle", "astronaut", "coffee", "chelsea", "rocket"}
    for name, values in table.items():
        measured = [
            rows[f"{name} / {m}"][k]
            for m in ("bicubic", "no reference", "SelfDZSR")
            for k in ("psnr", "psnr_corner")
        ]
        assert measured == pytest.approx(values, abs=0.006), name  # the table rounds to 0.01 dB


def test_sr_honours_the_backend_variable(files, tmp_path, monkeypatch):
    """Without --backend, DZSR_KERNELS_BACKEND selects the kernels (it used to be overridden by auto)."""
    import dzsr_kernels._backend as backend

    chosen = []
    real = backend.resolve

    def spy(op, device):
        chosen.append(real(op, device))
        return chosen[-1]

    monkeypatch.setattr(backend, "resolve", spy)
    monkeypatch.setenv("DZSR_KERNELS_BACKEND", "reference")
    out = tmp_path / "sr.png"
    out.write_bytes(b"an older result")
    argv = sr_argv(
        files["short"], files["tele"], out, "--ckpt", files["root"] / "x4.pt", "--tile", "0"
    )
    assert main(argv) == 0
    assert chosen and set(chosen) == {"reference"}
    # replaced whole, no temporary left beside it
    assert read_rgb(out).shape[2] == 3 and os.listdir(tmp_path) == ["sr.png"]


def test_info_names_the_torch_the_kernels_were_built_against(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert (
        f"C++ kernels: built against torch {torch.__version__}, running torch {torch.__version__}"
    ) in out
