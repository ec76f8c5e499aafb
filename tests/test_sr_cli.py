"""``dzsr sr`` for real use: folder mode, --device auto, --precision, --save-compare, progress.

Pairs are cut from the bundled real sample (``dzsr.sample``): a 48x64 crop of the short-focus image
and, as its telephoto, the centre 1/4 of the same crop in the ground truth (x4: 48x64 pixels), at
different places of the frame.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from cli_argv import sr_argv

from dzsr.checkpoint import save_checkpoint
from dzsr.cli import EXIT_ERROR, EXIT_SOME_FAILED, main
from dzsr.data import read_rgb, write_rgb
from dzsr.data.crops import central_box
from dzsr.devices import resolve_device
from dzsr.models import SelfDZSR
from dzsr.sample import DEMO, load_sample

CROP = (48, 64)  # the smallest short-focus size x4 accepts is 48x48
CORNERS = {"a": (0, 0), "b": (0, 121), "c": (77, 0), "d": (77, 121), "e": (40, 60)}
TELE_EXT = {"a": ".png", "b": ".jpg", "c": ".PNG", "d": ".png", "e": ".png"}  # paired by name only


def _pair(sample, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """(short crop, its telephoto) at LR position (y, x) of the demo sample."""
    h, w = CROP
    y0, y1, x0, x1 = central_box(h, w, 1 / 4)
    return (
        sample["short"][y : y + h, x : x + w],
        sample["gt"][4 * (y + y0) : 4 * (y + y1), 4 * (x + x0) : 4 * (x + x1)],
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Five pairs in short/ and tele/ (pair e's telephoto truncated) and a random-weight x4
    checkpoint."""
    root = tmp_path_factory.mktemp("sr_folders")
    sample = load_sample(DEMO, 4)
    for name, (y, x) in CORNERS.items():
        short, tele = _pair(sample, y, x)
        write_rgb(root / "short" / f"{name}.png", short)
        write_rgb(root / "tele" / f"{name}{TELE_EXT[name]}", tele)
    data = (root / "tele" / "e.png").read_bytes()
    (root / "tele" / "e.png").write_bytes(data[: len(data) // 2])
    torch.manual_seed(0)
    save_checkpoint(root / "x4.pt", SelfDZSR(4))
    return root


def _argv(world, out, *extra):
    return sr_argv(
        world / "short", world / "tele", out, "--ckpt", world / "x4.pt", "--tile", 32, *extra
    )


def test_folder_mode_writes_every_good_pair_and_reports_the_broken_one(world, tmp_path, capsys):
    out, compare = tmp_path / "new" / "sr", tmp_path / "cmp"
    assert main(_argv(world, out, "--save-compare", str(compare))) == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    good = ["a", "b", "c", "d"]
    assert sorted(os.listdir(out)) == [f"{n}.png" for n in good]  # no e.png, no temporary file
    assert sorted(os.listdir(compare)) == [f"{n}.png" for n in good]
    for name in good:
        assert read_rgb(out / f"{name}.png").shape == (192, 256, 3)
        assert read_rgb(compare / f"{name}.png").shape == (192, 2 * 256 + 4, 3)
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("dzsr sr: e: failed: cannot read image "), err
    assert "truncated" in err[0]
    table = captured.out.splitlines()
    assert table[0] == "| pair | output | seconds | status |"
    rows = [line.split(" | ") for line in table[2:7]]
    assert [r[0].strip("| ") for r in rows] == ["a", "b", "c", "d", "e"]
    assert [r[1] for r in rows] == ["192x256"] * 4 + ["-"]
    assert [r[3].rstrip(" |") for r in rows[:4]] == ["ok"] * 4 and rows[4][3].startswith("failed: ")
    assert table[7] == "4 of 5 pairs written, 1 failed"


def test_folder_mode_pairs_by_name(world, tmp_path, capsys):
    """Pair b (its telephoto a .jpg) gives in folder mode exactly what the single-pair command
    gives for b.png + b.jpg: the pairs are matched by name, not by position."""
    capsys.readouterr()
    single = tmp_path / "b.png"
    assert (
        main(
            sr_argv(
                world / "short" / "b.png",
                world / "tele" / "b.jpg",
                single,
                "--ckpt",
                world / "x4.pt",
                "--tile",
                32,
            )
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()  # the alignment line, then what was written
    assert out[0].startswith("telephoto ") and out[1] == f"wrote {single} (192x256, x4, cpu, fp32)"
    assert main(_argv(world, tmp_path / "all")) == EXIT_SOME_FAILED
    np.testing.assert_array_equal(read_rgb(tmp_path / "all" / "b.png"), read_rgb(single))
    assert not np.array_equal(read_rgb(tmp_path / "all" / "a.png")[:10], read_rgb(single)[:10])


def test_partnerless_ambiguous_and_misfit_pairs_fail_alone(tmp_path, world, capsys):
    for name, folder in (
        ("lone", "short"),
        ("twin", "short"),
        ("twin", "tele"),
        ("small", "short"),
        ("small", "tele"),
        ("ok", "short"),
        ("ok", "tele"),
    ):
        os.makedirs(tmp_path / folder, exist_ok=True)
        os.link(world / folder / "a.png", tmp_path / folder / f"{name}.png")
    os.link(world / "short" / "a.png", tmp_path / "short" / "twin.jpg")
    write_rgb(tmp_path / "tele" / "small.png", np.zeros((12, 16, 3), np.uint8))  # x1, not x4
    (tmp_path / "tele" / "notes.txt").write_text("not an image: ignored")
    capsys.readouterr()
    argv = [
        "sr",
        "--short",
        str(tmp_path / "short"),
        "--tele",
        str(tmp_path / "tele"),
        "--out",
        str(tmp_path / "out"),
        "--ckpt",
        str(world / "x4.pt"),
        "--tile",
        "32",
    ]
    assert main(argv) == EXIT_SOME_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"dzsr sr: lone: failed: no telephoto image lone.* in {tmp_path / 'tele'}"
    assert err[1].startswith("dzsr sr: small: failed: ") and "scale 4" in err[1]
    assert err[2] == (
        f"dzsr sr: twin: failed: ambiguous name: twin.jpg, twin.png in {tmp_path / 'short'}"
    )
    assert len(err) == 3 and os.listdir(tmp_path / "out") == ["ok.png"]


def test_existing_outputs_are_replaced_whole(world, tmp_path, capsys):
    """As for a single --out: an earlier result in --out is replaced (atomically), others kept."""
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "a.png").write_bytes(b"an older result")
    (out / "keep.txt").write_text("a user's file")
    assert main(_argv(world, out)) == EXIT_SOME_FAILED
    assert read_rgb(out / "a.png").shape == (192, 256, 3)
    assert (out / "keep.txt").read_text() == "a user's file"
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "d.png", "keep.txt"]


def test_running_out_of_memory_is_one_line_or_one_failed_pair(world, tmp_path, capsys, monkeypatch):
    import dzsr.sr_batch

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.\nMore text.")

    monkeypatch.setattr(dzsr.sr_batch, "super_resolve", exhausted)
    capsys.readouterr()
    single = [
        "sr",
        "--short",
        str(world / "short" / "a.png"),
        "--tele",
        str(world / "tele" / "a.png"),
        "--out",
        str(tmp_path / "a.png"),
        "--ckpt",
        str(world / "x4.pt"),
        "--device",
        "cpu",
    ]
    assert main(single) == dzsr.cli.EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "dzsr sr: error: out of memory on cpu for the 48x64 short-focus image: try a "
        "smaller --tile or --precision bf16 (CUDA out of memory. Tried to allocate "
        "9.00 GiB.)"
    ]
    assert main(_argv(world, tmp_path / "out")) == EXIT_SOME_FAILED
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all("failed: " in line for line in err)
    assert sum("out of memory on cpu" in line for line in err) == 4
    assert os.listdir(tmp_path) == []  # nothing written, not even the --out folder


def test_device_auto_is_cuda_when_available_else_cpu(monkeypatch):
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "--device") == torch.device(here)
    assert resolve_device("cpu", "--device") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "--device") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "--device") == torch.device("cpu")
    with pytest.raises(ValueError, match="config key device cuda: CUDA is not available"):
        resolve_device("cuda", "config key device")
    with pytest.raises(ValueError, match=r"--device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu", "--device")


def test_bf16_from_the_command_line_meets_the_psnr_bound(world, tmp_path, capsys, bf16_on_any_cpu):
    """The shipped checkpoint (the default --ckpt) on pair a, in fp32 and bf16, on the default
    device (auto: cpu here); the written PNGs agree within 40 dB."""
    paths = {}
    for precision in ("fp32", "bf16"):
        paths[precision] = tmp_path / f"{precision}.png"
        assert (
            main(
                sr_argv(
                    world / "short" / "a.png",
                    world / "tele" / "a.png",
                    paths[precision],
                    "--precision",
                    precision,
                    "--tile",
                    32,
                )
            )
            == 0
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        assert f"(192x256, x4, {device}, {precision})" in capsys.readouterr().out
    fp32, bf16 = (read_rgb(paths[p]).astype(np.float64) / 255 for p in ("fp32", "bf16"))
    assert not np.array_equal(fp32, bf16)
    assert 10 * np.log10(1 / np.mean((fp32 - bf16) ** 2)) >= 40.0


def test_bf16_on_a_cpu_without_bfloat16_is_one_error_before_any_work(
    world, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: False)
    out = tmp_path / "sr.png"
    argv = sr_argv(world / "short" / "a.png", world / "tele" / "a.png", out)
    assert main([*argv, "--device", "cpu", "--precision", "bf16"]) == EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "dzsr sr: error: --precision bf16 needs a CPU with bfloat16 arithmetic"
    )
    assert not out.exists()


def test_progress_bars_show_on_a_terminal_only(world, tmp_path, capsys, monkeypatch):
    """Bars over the pairs and the tiles go to stderr when it is a terminal (faked here, so the
    test does not depend on how pytest runs), and --no-progress turns them off."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = _argv(world, tmp_path / "out")
    assert main(argv) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "pairs: 100%" in err and "5/5" in err and "tile" in err
    failure = [line for line in err.splitlines() if "dzsr sr: e: failed" in line]
    assert len(failure) == 1
    assert main([*argv, "--no-progress"]) == EXIT_SOME_FAILED
    assert capsys.readouterr().err.splitlines() == [failure[0][failure[0].index("dzsr") :]]
