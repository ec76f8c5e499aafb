"""``prepare_inputs(align="auto")``: an already aligned telephoto is used as it is, a raw one is
aligned (``dzsr.data.prepare.residual_motion``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dzsr.data.crops import central_box, scale_box
from dzsr.data.imageio import to_float
from dzsr.data.inputs import prepare_inputs
from dzsr.data.prepare import ALIGNED_MEDIAN_HR, prepare_pair, residual_motion
from dzsr.sample import load_sample

KEYS = ("lr", "ref", "paste_ref", "paste_box")


def aligned_pair(name: str, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled short-focus image, the centre of its ground truth (a telephoto aligned with
    the focal-ratio crop by construction) and the raw telephoto."""
    s = load_sample(name, scale)
    y0, y1, x0, x1 = scale_box(central_box(*s["short"].shape[:2], 1 / scale), scale)
    return s["short"], s["gt"][y0:y1, x0:x1], s["tele"]


def assert_same_inputs(a: dict, b: dict) -> None:
    assert a["box"] == b["box"]
    for key in KEYS:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name,scale", [("motorcycle", 4), ("astronaut", 2)])
def test_aligned_telephoto_is_used_as_it_is(name, scale):
    short, cut, _ = aligned_pair(name, scale)
    auto = prepare_inputs(short, cut, scale)
    never = prepare_inputs(short, cut, scale, align="never")
    assert auto["alignment"].startswith("telephoto used as it is (already aligned: only resized)")
    assert "px median" in auto["alignment"] and "px median" not in never["alignment"]
    assert_same_inputs(auto, never)
    assert auto["box"] == central_box(*short.shape[:2], 1 / scale)  # no trim
    assert np.allclose(auto["paste_ref"][0].permute(1, 2, 0).numpy(), to_float(cut), atol=1e-6)
    # re-aligning it instead warps, colour-matches and trims it
    assert prepare_inputs(short, cut, scale, align="always")["alignment"].startswith(
        "telephoto aligned: DIS flow warp"
    )


@pytest.mark.parametrize("name,scale", [("motorcycle", 4), ("chelsea", 2)])
def test_raw_or_shifted_telephoto_is_aligned(name, scale):
    short, cut, tele = aligned_pair(name, scale)
    auto = prepare_inputs(short, tele, scale)
    always = prepare_inputs(short, tele, scale, align="always")
    assert auto["alignment"].startswith("telephoto aligned: DIS flow warp, colour match, trim ")
    assert "px median" in auto["alignment"]
    assert_same_inputs(auto, always)
    shifted = np.roll(cut, 2, axis=0)  # two HR pixels off
    assert prepare_inputs(short, shifted, scale)["alignment"].startswith("telephoto aligned")


def test_residual_motion_measures_hr_pixels():
    short, cut, tele = (to_float(x) for x in aligned_pair("coffee", 4))
    assert residual_motion(short, cut, 4).median < 0.1
    assert residual_motion(short, tele, 4).median > 4 * ALIGNED_MEDIAN_HR
    one_px = residual_motion(short, np.roll(cut, 1, axis=1), 4)
    assert 0.7 < one_px.median < 1.3 and not one_px.aligned
    with pytest.raises(ValueError, match="inconsistent with scale"):
        residual_motion(short, tele[:40, :60], 4)


def test_a_prepared_pair_counts_as_aligned():
    """``prepare_pair``'s own output (LR crop + aligned telephoto, as ``dzsr prepare`` writes
    it), its centre cut as the telephoto of that LR, at x2 where the LR is large enough."""
    s = load_sample("astronaut", 2)
    pair = prepare_pair(s["short"], s["tele"], 2)
    y0, y1, x0, x1 = scale_box(central_box(*pair["lr"].shape[:2], 1 / 2), 2)
    assert residual_motion(pair["lr"], pair["gt"][y0:y1, x0:x1], 2).aligned


def test_bad_align_mode():
    short, cut, _ = aligned_pair("chelsea", 2)
    with pytest.raises(ValueError, match="align must be one of auto, always, never, got 'yes'"):
        prepare_inputs(short, cut, 2, align="yes")
