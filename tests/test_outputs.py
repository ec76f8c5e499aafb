"""No user file is ever lost: output checks, atomic writes (full disk, failures), complete-image and
checkpoint reads, the training folder guard and Ctrl-C during training (dzsr.outputs, dzsr.train)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

import dzsr.outputs
from dzsr.checkpoint import load_checkpoint, read_file, save_checkpoint
from dzsr.cli import EXIT_ERROR, EXIT_INTERRUPTED, main
from dzsr.data import read_rgb, write_rgb
from dzsr.evaluate import write_csv
from dzsr.models import SelfDZSR
from dzsr.outputs import OutputError, atomic_write, check_output


def _image(rng, h=37, w=23, dtype=np.uint8):
    hi = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, hi + 1, (h, w, 3)).astype(dtype)


class _FullDisk:
    """A file object that accepts ``room`` bytes, then fails like a full disk."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _full_disk(monkeypatch, room=10):
    real = dzsr.outputs._open
    monkeypatch.setattr(dzsr.outputs, "_open", lambda fd: _FullDisk(real(fd), room))


def _writers(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"name": "a", "psnr": 30.0, "ssim": 0.9, "psnr_corner": 29.0, "ssim_corner": 0.8}]
    return {
        "image": (tmp_path / "x.png", lambda p: write_rgb(p, _image(rng))),
        "csv": (tmp_path / "x.csv", lambda p: write_csv(rows, p)),
        "checkpoint": (tmp_path / "x.pt", lambda p: save_checkpoint(p, SelfDZSR(2))),
    }


@pytest.mark.parametrize("kind", ["image", "csv", "checkpoint"])
def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(kind, tmp_path, monkeypatch):
    path, write = _writers(tmp_path)[kind]
    path.write_bytes(b"the user's old file")
    _full_disk(monkeypatch)
    with pytest.raises(OutputError) as err:
        write(path)
    assert (
        str(err.value) == f"cannot write {path}: no space left on device"
        and err.value.errno == errno.ENOSPC
    )
    assert path.read_bytes() == b"the user's old file"
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize("kind", ["image", "csv", "checkpoint"])
def test_writes_replace_only_when_complete(kind, tmp_path):
    path, write = _writers(tmp_path)[kind]
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write(path)
    assert (
        path.read_bytes() != b"old" and os.stat(path).st_mode & 0o777 == 0o640
    )  # replaced, mode kept
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_new_files_get_umask_permissions_and_parent_folders(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new" / "deep" / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new" / "deep" / "a.bin").st_mode & 0o777 == 0o640


def test_check_output_refuses_every_alias_of_an_input(tmp_path):
    photo = tmp_path / "photo.png"
    write_rgb(photo, _image(np.random.default_rng(1)))
    os.symlink(photo, tmp_path / "link.png")
    os.link(photo, tmp_path / "hard.png")
    os.makedirs(tmp_path / "sub")
    for alias in (
        photo,
        tmp_path / "link.png",
        tmp_path / "hard.png",
        tmp_path / "sub" / ".." / "photo.png",
    ):
        with pytest.raises(OutputError, match="is the input file"):
            check_output(alias, "--out", (".png",), inputs=[str(photo)])
    assert check_output(tmp_path / "other.png", "--out", (".png",), inputs=[str(photo)]) == str(
        tmp_path / "other.png"
    )
    assert os.listdir(tmp_path / "sub") == []  # the writability probe leaves nothing behind


def test_check_output_names_the_problem(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    cases = {
        "": "empty output path",
        str(tmp_path / "noext"): "no file extension",
        str(tmp_path / "a.xyz"): "unknown extension '.xyz'",
        str(tmp_path): "is a folder",
        str(tmp_path / "file" / "a.png"): "is a file, not a folder",
    }
    for path, fragment in cases.items():
        if path == str(tmp_path):
            path, exts = str(tmp_path), None
        else:
            exts = (".png",)
        with pytest.raises(OutputError, match=fragment):
            check_output(path, "--out", exts)

    def read_only(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(dzsr.outputs, "_probe", read_only)
    with pytest.raises(OutputError, match="not writable \\(read-only file system\\)"):
        check_output(tmp_path / "a.png", "--out", (".png",))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tif"])
def test_truncated_images_are_errors_and_complete_ones_decode_as_before(ext, tmp_path):
    rng = np.random.default_rng(2)
    img = cv2.resize(_image(rng, 20, 15), (90, 120))
    path = tmp_path / f"a{ext}"
    write_rgb(path, img)
    data = path.read_bytes()
    np.testing.assert_array_equal(
        read_rgb(path), cv2.imread(str(path))[:, :, ::-1]
    )  # same decoder as imread
    (tmp_path / f"trailer{ext}").write_bytes(data + b"camera trailer")
    np.testing.assert_array_equal(read_rgb(tmp_path / f"trailer{ext}"), read_rgb(path))
    for cut in sorted(
        {
            1,
            9,
            len(data) // 3,
            len(data) // 2,
            len(data) - 2,
            len(data) - 1,
            *rng.integers(2, len(data), 4),
        }
    ):
        (tmp_path / f"cut{ext}").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cannot read image .*cut{ext}"):
            read_rgb(tmp_path / f"cut{ext}")


def test_progressive_sixteen_bit_gray_and_rotated_images_still_read(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    deep = _image(rng, 11, 7, np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(read_rgb(tmp_path / "deep.png"), deep[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "gray.png"), deep[:, :, 0])
    assert read_rgb(tmp_path / "gray.png").shape == (11, 7, 3)
    img = Image.fromarray(cv2.resize(_image(rng, 8, 6), (48, 64)))
    img.save(tmp_path / "prog.jpg", progressive=True)
    assert read_rgb(tmp_path / "prog.jpg").shape == (64, 48, 3)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_rgb(tmp_path / "rot.jpg").shape == (48, 64, 3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_rgb(tmp_path / "empty.jpg")


class _Thing:
    """A Python object: weights-only loading refuses it."""


def test_unreadable_checkpoints_are_one_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(3)}, good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(4).bytes(999),
        "text": b"hello\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"a": _Thing()}, tmp_path / "object")
    for name in [*files, "object"]:
        with pytest.raises(ValueError) as err:
            read_file(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"cannot read checkpoint {tmp_path / name}: ") and "\n" not in msg, (
            msg
        )
        assert "weights_only" not in msg
    with pytest.raises(FileNotFoundError, match="nope"):
        read_file(tmp_path / "nope")
    assert torch.equal(read_file(good)["a"], torch.zeros(3))


# ----------------------------------------------------------------------------- training


def _tiny(out_dir, *extra):
    from dzsr.config import load_config

    return load_config(
        "sample_x4",
        [
            f"log.out_dir={out_dir}",
            "data.photos=[camera.png]",
            "data.patch_size=24",
            "train.batch_size=2",
            "train.iters_per_epoch=3",
            "train.epochs=1",
            "log.checkpoint_every=100",
            "log.scalars_every=100",
            "log.images_every=100",
            *extra,
        ],
    )


def test_train_refuses_a_folder_with_checkpoints(tmp_path, capfd):
    out = tmp_path / "run"
    os.makedirs(out)
    (out / "last.pt").write_bytes(b"the previous run")
    argv = ["train", "--config", "sample_x4", f"log.out_dir={out}"]
    assert main(argv) == EXIT_ERROR
    err = capfd.readouterr().err
    assert (
        err.startswith("dzsr train: error: log.out_dir")
        and "--resume" in err
        and "--overwrite" in err
    )
    assert err.count("\n") == 1 and (out / "last.pt").read_bytes() == b"the previous run"
    assert main([*argv, "--resume", str(out / "last.pt"), "--overwrite"]) == EXIT_ERROR
    assert "not allowed with argument" in capfd.readouterr().err


def test_ctrl_c_writes_the_iteration_reached_and_resuming_continues_exactly(
    tmp_path, monkeypatch, request
):
    """3 iterations straight == Ctrl-C after iteration 2 (no regular checkpoint there), resume, 1 more."""
    import dzsr.train as train_mod

    straight = train_mod.train(_tiny(tmp_path / "a"), progress=False)
    real_log = train_mod._log

    def log_then_ctrl_c(writer, bar, log, iteration, *args):
        real_log(writer, bar, log, iteration, *args)
        if iteration == 2:
            signal.raise_signal(signal.SIGINT)  # deferred: the iteration completes first

    monkeypatch.setattr(train_mod, "_log", log_then_ctrl_c)
    # A Ctrl-C must be deliverable: a suite started in the background (`cmd &` in a script) inherits
    # SIGINT ignored, and training then rightly leaves it ignored.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(train_mod.TrainingInterrupted, match="at iteration 2 of 3"):
        train_mod.train(_tiny(tmp_path / "b"), progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert load_checkpoint(tmp_path / "b" / "last.pt")[1]["extra"]["iteration"] == 2
    monkeypatch.setattr(train_mod, "_log", real_log)
    resumed = train_mod.train(_tiny(tmp_path / "b"), resume=True, progress=False)
    (ma, ca), (mb, cb) = load_checkpoint(straight), load_checkpoint(resumed)
    assert ca["extra"]["iteration"] == cb["extra"]["iteration"] == 3
    wa, wb = ma.state_dict(), mb.state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)


def test_sigint_to_the_real_command(tmp_path):
    """A real Ctrl-C: exit status 130, one line naming the checkpoint, which holds that iteration."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dzsr.cli",
            "train",
            "--config",
            "sample_x4",
            "--no-progress",
            *[a for a in _argv_overrides(out)],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # SIGINT at its default in the child even when this suite inherited it ignored (`cmd &`)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dzsr train: interrupted: at iteration "), err
    reached = int(lines[0].split("at iteration ")[1].split()[0])
    assert f"wrote {out / 'last.pt'}" in lines[0]
    assert load_checkpoint(out / "last.pt")[1]["extra"]["iteration"] == reached
    assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []


def _argv_overrides(out):
    return [
        f"log.out_dir={out}",
        "data.photos=[camera.png]",
        "data.patch_size=24",
        "train.batch_size=2",
        "train.iters_per_epoch=1000",
        "train.epochs=1",
        "log.checkpoint_every=1",
        "log.scalars_every=1000",
        "log.images_every=1000",
    ]


def test_full_disk_through_the_command_names_the_file(tmp_path, monkeypatch, capfd):
    for d in ("sr", "gt"):
        os.makedirs(tmp_path / d)
        write_rgb(tmp_path / d / "a.png", _image(np.random.default_rng(5), 64, 64))
    csv = tmp_path / "m.csv"
    csv.write_text("old table\n")
    _full_disk(monkeypatch)
    assert (
        main(
            [
                "eval",
                "--sr",
                str(tmp_path / "sr"),
                "--gt",
                str(tmp_path / "gt"),
                "--scale",
                "4",
                "--csv",
                str(csv),
            ]
        )
        == EXIT_ERROR
    )
    err = capfd.readouterr().err
    assert err == f"dzsr eval: error: cannot write {csv}: no space left on device\n"
    assert csv.read_text() == "old table\n" and sorted(os.listdir(tmp_path)) == [
        "gt",
        "m.csv",
        "sr",
    ]
