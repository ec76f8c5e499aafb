"""Synthetic dead-leaves training pictures (dzsr.data.dead_leaves) and their place in the sample
data (dzsr.sample.training)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dzsr.data.dead_leaves import dead_leaves, leaf_colours, leaf_radii
from dzsr.sample import SYNTHETIC_SIZE, prepare_sample_data, synthetic_frame_pair


def test_same_seed_same_bytes_other_seed_other_picture():
    a, b = (dead_leaves(96, np.random.default_rng([3, 1])) for _ in range(2))
    c = dead_leaves(96, np.random.default_rng([3, 2]))
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_radii_follow_the_inverse_cube_law():
    """p(r) ∝ r^-3 on [a, b]: P(r <= x) = (a^-2 - x^-2) / (a^-2 - b^-2), checked at several x."""
    a, b = 2.0, 80.0
    r = leaf_radii(200_000, a, b, np.random.default_rng(0))
    assert r.min() >= a and r.max() <= b
    for x in (2.5, 4.0, 10.0, 30.0):
        expected = (a**-2 - x**-2) / (a**-2 - b**-2)
        assert abs((r <= x).mean() - expected) < 0.005


def test_colours_are_valid_rgb_mostly_unsaturated():
    rgb = leaf_colours(5000, np.random.default_rng(1))
    assert rgb.shape == (5000, 3) and rgb.min() >= 0 and rgb.max() <= 1
    saturation = (rgb.max(1) - rgb.min(1)) / np.maximum(rgb.max(1), 1e-6)
    assert 0.2 < np.median(saturation) < 0.4  # Beta(1, 2.5): median ~0.24


def test_pictures_have_flat_regions_edges_and_colour():
    img = dead_leaves(256, np.random.default_rng(7)).astype(np.float64)
    grad = np.abs(np.diff(img, axis=1)).max(axis=2)
    assert (grad <= 4).mean() > 0.3  # many flat pixels (up to noise and shading) ...
    assert (grad >= 40).mean() > 0.005  # ... with sharp occlusion edges
    assert np.abs(img[..., 0] - img[..., 2]).mean() > 5  # not grey
    assert 40 < img.mean() < 200


@pytest.mark.parametrize("size", [8, 64.0, "64"])
def test_bad_size_is_named(size):
    with pytest.raises(ValueError, match="dead-leaves size must be an integer of at least 16"):
        dead_leaves(size, np.random.default_rng(0))


@pytest.mark.parametrize("scale", [2, 4])
def test_synthetic_pairs_are_box_downs_of_one_picture(tmp_path, scale):
    from dzsr.data import read_rgb

    lr, gt = synthetic_frame_pair(0, 5, scale)
    side = SYNTHETIC_SIZE // 4
    assert lr.shape == (side, side, 3) and gt.shape == (scale * side, scale * side, 3)
    box = gt.astype(np.float64).reshape(side, scale, side, scale, 3).mean(axis=(1, 3))
    assert np.abs(box - lr).max() <= (0.5 if scale == 4 else 1.0) + 1e-9
    root = tmp_path / "d"
    prepare_sample_data(str(root), [], scale, ["camera.png"], "frame", synthetic=2, seed=5)
    assert np.array_equal(read_rgb(str(root / "train_LR" / "dead_leaves_000_x1.png")), lr)
    other = read_rgb(str(root / "train_LR" / "dead_leaves_001_x1.png"))
    assert not np.array_equal(other, lr)
    assert (root / "train_LR" / "camera_x1.png").is_file()


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3"])
def test_bad_synthetic_count_is_named(tmp_path, bad):
    with pytest.raises(ValueError, match="^synthetic must be a number of dead-leaves pictures"):
        prepare_sample_data(str(tmp_path / "d"), [], 4, ["camera.png"], "frame", synthetic=bad)


def test_no_training_images_is_named(tmp_path):
    with pytest.raises(ValueError, match="^no training images: give samples, photos or synthetic"):
        prepare_sample_data(str(tmp_path / "d"), [], 4, [], "frame")


def test_rewriting_the_sample_data_drops_pairs_of_earlier_settings(tmp_path):
    """The training set is what the data keys say, also in an out_dir reused with fewer pictures."""
    root = tmp_path / "d"
    prepare_sample_data(str(root), [], 4, ["camera.png"], "frame", synthetic=3)
    prepare_sample_data(str(root), [], 4, [], "frame", synthetic=1)
    assert sorted(os.listdir(root / "train_LR")) == ["dead_leaves_000_x1.png"]
    assert sorted(os.listdir(root / "train_HR")) == ["dead_leaves_000_x4.png"]
