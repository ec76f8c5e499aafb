"""The bundled dual-zoom samples (dzsr.sample)."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from dzsr.data import central_box, read_rgb
from dzsr.sample import (
    HELD_OUT,
    SAMPLE_NAMES,
    bundled_photo,
    frame_pair,
    load_sample,
    photo_pair,
    prepare_sample_data,
    sample_data_problems,
    write_sample,
)

# documented short/tele size (h, w); gt is (scale*h, scale*w)
SIZES = {
    "motorcycle": (125, 185),
    "astronaut": (128, 128),
    "coffee": (100, 150),
    "chelsea": (75, 112),
    "rocket": (106, 160),
}


def digest(sample):
    data = b"".join(sample[k].tobytes() for k in ("short", "tele", "gt"))
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("scale", [4, 2])
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_is_deterministic_with_documented_sizes(name, scale):
    a, b = load_sample(name, scale), load_sample(name, scale)
    assert digest(a) == digest(b)
    h, w = SIZES[name]
    assert a["short"].shape == (h, w, 3) and a["tele"].shape == (h, w, 3)
    assert a["gt"].shape == (scale * h, scale * w, 3)
    assert all(a[k].dtype == np.uint8 for k in ("short", "tele", "gt"))
    y0, y1, x0, x1 = a["tele_box"]
    # the tele covers the centre 1/scale of the wide field of view
    assert (y1 - y0, x1 - x0) == (h, w)


def test_motorcycle_x4_bytes_are_pinned():
    # Box means of integer pixels and crops only: exact arithmetic, the same bytes on every machine.
    assert digest(load_sample("motorcycle", 4)).startswith("2a5ebd5f0ce96030")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_short_is_the_box_downsampled_ground_truth(name):
    s4, s2 = load_sample(name, 4), load_sample(name, 2)
    h, w = SIZES[name]
    mean4 = s4["gt"].reshape(h, 4, w, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.array_equal(np.rint(mean4).astype(np.uint8), s4["short"])
    mean2 = s2["gt"].reshape(h, 2, w, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(mean2 - s2["short"]).max() <= 1.0  # double rounding at x2
    assert np.array_equal(s4["short"], s2["short"])


def test_tele_is_a_second_view_of_the_centre():
    for name in SAMPLE_NAMES:
        s = load_sample(name, 4)
        y0, y1, x0, x1 = s["tele_box"]
        centre = s["gt"][y0:y1, x0:x1].astype(np.float64)
        tele = s["tele"].astype(np.float64)
        other = s["gt"][: y1 - y0, : x1 - x0].astype(np.float64)  # an unrelated region
        # a different view (real parallax or the known warp), yet much closer than unrelated content
        assert 0 < np.abs(tele - centre).mean() < 0.5 * np.abs(other - centre).mean()


def test_held_out_names_and_errors():
    assert set(HELD_OUT) == {"astronaut", "coffee", "chelsea", "rocket"}
    with pytest.raises(ValueError, match="unknown sample 'lena'"):
        load_sample("lena")
    with pytest.raises(ValueError, match="scale must be one of"):
        load_sample("motorcycle", 3)


def test_write_sample_round_trips(tmp_path):
    paths = write_sample("chelsea", 2, tmp_path / "chelsea")
    sample = load_sample("chelsea", 2)
    for key, path in paths.items():
        assert np.array_equal(read_rgb(path), sample[key])


def test_samples_build_without_network():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "from dzsr.sample import SAMPLE_NAMES, load_sample\n"
        "[load_sample(n, s) for n in SAMPLE_NAMES for s in (2, 4)]\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- training pairs


@pytest.mark.parametrize("scale", [2, 4])
def test_frame_pairs_are_whole_aligned_photographs(tmp_path, scale):
    """photos_as=frame: LR is the 4x box-down of the photograph, GT its (4/scale) box-down."""
    root = tmp_path / "d"
    prepare_sample_data(str(root), [], scale, ["camera.png", "ihc.png"], "frame")
    for name in ("camera", "ihc"):
        lr = read_rgb(str(root / "train_LR" / f"{name}_x1.png")).astype(np.float64)
        gt = read_rgb(str(root / "train_HR" / f"{name}_x{scale}.png")).astype(np.float64)
        assert lr.shape[:2] == (128, 128) and gt.shape[:2] == (128 * scale, 128 * scale)
        box = gt.reshape(128, scale, 128, scale, 3).mean(axis=(1, 3))
        # up to rounding of LR (and of GT at x2)
        assert np.abs(box - lr).max() <= (0.5 if scale == 4 else 1.0) + 1e-9


def test_capture_pairs_come_from_the_known_similarity_view():
    """photos_as=capture: the short image is the 4x box-down, the tele the warped centre."""
    short, tele = photo_pair("camera.png", 4)
    photo = bundled_photo("camera.png")
    assert np.array_equal(short, frame_pair(photo, 4)[0])
    assert tele.shape == short.shape and tele.flags.c_contiguous
    y0, y1, x0, x1 = central_box(*photo.shape[:2], 1 / 4)
    centre = photo[y0:y1, x0:x1].astype(np.float64)
    other = photo[: y1 - y0, : x1 - x0].astype(np.float64)
    assert 0 < np.abs(tele - centre).mean() < 0.5 * np.abs(other - centre).mean()


@pytest.mark.parametrize(
    "args, message",
    [
        ((["astronaut"], []), "samples: not for training: astronaut (a held-out photograph)"),
        (
            ([], ["coffee.png"]),
            "photos: not for training: coffee.png (a held-out or demo photograph)",
        ),
        (
            ([], ["motorcycle_right.png"]),
            "photos: not for training: motorcycle_right.png (a held-out",
        ),
        (
            ([], ["ihc.png", "no_such.png"]),
            "photos: not for training: no_such.png (not among scikit-image's bundled photographs)",
        ),
        (
            (["lena"], []),
            "samples: not for training: lena (not a bundled sample; these are motorcycle",
        ),
        (([], ["ihc.png"], "tiles"), "photos_as must be one of capture, frame, got 'tiles'"),
        (([], ["ihc.png"], "frame", -1), "synthetic must be a number of dead-leaves pictures"),
        (([], []), "no training images: give samples, photos or synthetic"),
    ],
)
def test_bad_sample_data_arguments_are_named_before_anything_is_written(tmp_path, args, message):
    with pytest.raises(ValueError) as err:
        prepare_sample_data(str(tmp_path / "x"), args[0], 4, *args[1:])
    assert str(err.value).startswith(message), str(err.value)
    assert not (tmp_path / "x").exists()


def test_sample_data_problems_name_config_keys_one_per_argument():
    problems = sample_data_problems(
        ["astronaut", "lena"], ["coffee.png", "nope.png"], "tiles", 0, prefix="data."
    )
    assert [key for key, _ in problems] == ["data.samples", "data.photos", "data.photos_as"]
    assert problems[0][1].startswith("data.samples: not for training: astronaut (a held-out")
    assert "lena (not a bundled sample" in problems[0][1]
    assert "coffee.png (a held-out" in problems[1][1] and "nope.png (not among" in problems[1][1]
    assert sample_data_problems(["motorcycle"], ["camera.png"]) == []
