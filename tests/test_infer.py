"""Whole-image inference: exact halo tiling vs the untiled forward, inputs from images."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import dzsr_kernels
from dzsr.data.inputs import prepare_inputs
from dzsr.infer import grow, split_tiles, super_resolve, tiled
from dzsr.models import OffsetEstimator, SelfDZSR
from dzsr.models.blocks import PixelShuffleUpsampler, ResidualBlock
from dzsr.sample import load_sample


def _small_model(scale: int = 4, blocks: int = 2, change=None) -> SelfDZSR:
    """A SelfDZSR with fewer residual blocks (the tiler reads the count), so tests stay fast, and
    non-trivial reference-AdaSTN geometry (its taps then land between pixels, far from the centre).
    ``change(model)``, when given, edits its layers first."""
    model = SelfDZSR(scale)
    model.restoration.blocks = model.restoration.blocks[:blocks]
    if change is not None:
        change(model)
    with torch.no_grad():
        est = model.restoration.reference.align.offsets
        est.to_translation.weight.mul_(30.0)
        est.to_matrix.weight.mul_(10.0)
    return model.eval()


def _inputs(h: int, w: int, scale: int):
    lr, ref = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
    bh, bw = h // scale, w // scale
    y0, x0 = (h - bh) // 2, (w - bw) // 2
    return (
        lr,
        ref,
        torch.rand(1, 3, scale * bh, scale * bw),
        torch.tensor([[y0, y0 + bh, x0, x0 + bw]]),
    )


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("scale,size,tile", [(4, (29, 38), 11), (2, (26, 33), 9)])
def test_tiled_equals_untiled(backend, scale, size, tile):
    if backend not in dzsr_kernels.available_backends("cpu"):
        pytest.fail(f"backend {backend} unavailable on CPU")
    model = _small_model(scale)
    lr, ref, paste_ref, box = _inputs(*size, scale)  # sizes not multiples of 4
    with dzsr_kernels.use_backend(backend):
        whole = super_resolve(model, lr, ref, paste_ref, box, tile=None)
        tiled = super_resolve(model, lr, ref, paste_ref, box, tile=tile)
    assert tiled.shape == whole.shape == (1, 3, scale * size[0], scale * size[1])
    assert tiled.is_contiguous() and whole.is_contiguous()
    assert len(split_tiles(-(-size[0] // 4) * 4, -(-size[1] // 4) * 4, tile)) >= 4
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_output_in_the_inputs_layout_and_independent_of_it(layout):
    """The model runs on channels-last copies whatever the inputs' layout; the output comes back
    contiguous in lr's layout, equal (up to rounding) to that of NCHW inputs, tiled or not."""
    model = _small_model()
    inputs = _inputs(29, 38, 4)
    moved = [t.contiguous(memory_format=layout) if t.dim() == 4 else t for t in inputs]
    with dzsr_kernels.use_backend("reference"):
        for tile in (None, 11):
            want = super_resolve(model, *inputs, tile=tile)
            got = super_resolve(model, *moved, tile=tile)
            assert got.is_contiguous(memory_format=layout)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_tiled_equals_untiled_batch_without_paste():
    model = _small_model(4)
    lr, ref = torch.rand(2, 3, 20, 27), torch.rand(2, 3, 20, 27)
    pl, pr = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 20, 24)
    whole = super_resolve(model, lr, ref, predictor_lr=pl, predictor_ref=pr, tile=None)
    tiled = super_resolve(model, lr, ref, predictor_lr=pl, predictor_ref=pr, tile=10)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def _widened(conv: nn.Conv2d, kernel: int) -> nn.Conv2d:
    """A fresh 'same' convolution like ``conv`` with a ``kernel`` x ``kernel`` kernel, its default
    weights x5 so that the outer taps visibly matter."""
    wide = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel, padding=kernel // 2, groups=conv.groups
    )
    with torch.no_grad():
        wide.weight.mul_(5.0)
    return wide


def _widen_estimator(model):
    est = model.restoration.reference.align.offsets
    est.to_matrix = _widened(est.to_matrix, 7)


def _widen_block(model):
    model.restoration.blocks[0].conv1 = _widened(model.restoration.blocks[0].conv1, 5)


def _widen_upsampler(model):
    convs = model.restoration.upsampler.convs
    convs[0] = _widened(convs[0], 5)


# (change, the stage halo the tiler reads, its value before -> after, the layer group whose own
# halo the change grows: its class, the property's name, where it sits in the model)
WIDENED = [
    (
        _widen_estimator,
        lambda m: m.restoration.reference.align.estimate_halo,
        4,
        5,
        OffsetEstimator,
        "halo",
        lambda m: m.restoration.reference.align.offsets,
    ),
    (
        _widen_block,
        lambda m: m.restoration.body_halo,
        5,
        6,
        ResidualBlock,
        "halo",
        lambda m: m.restoration.blocks[1],
    ),
    (
        _widen_upsampler,
        lambda m: m.restoration.upsample_halo,
        2,
        3,
        PixelShuffleUpsampler,
        "reach",
        lambda m: m.restoration.upsampler,
    ),
]


@pytest.mark.parametrize(
    "change,halo,before,after,owner,name,layers",
    WIDENED,
    ids=["estimator 5x5->7x7", "block conv 3x3->5x5", "upsampler conv 3x3->5x5"],
)
def test_tiler_follows_a_stage_whose_kernel_grows(change, halo, before, after, owner, name, layers):
    """A stage with a larger kernel has a larger halo, computed from its layers, and tiling it stays
    exact; the same tiling with that layer group's halo held at its old value is not."""
    plain = _small_model()
    assert halo(plain) == before
    model = _small_model(change=change)
    assert halo(model) == after
    lr, ref, paste_ref, box = _inputs(29, 38, 4)
    whole = super_resolve(model, lr, ref, paste_ref, box, tile=None)
    tiled = super_resolve(model, lr, ref, paste_ref, box, tile=11)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    old = getattr(layers(plain), name)
    with mock.patch.object(owner, name, property(lambda self: old)):
        assert halo(model) == before
        stale = super_resolve(model, lr, ref, paste_ref, box, tile=11)
    assert (stale - whole).abs().max() > 1e-5  # the tolerance the exact tiling meets


def test_progress_counts_every_tile_of_every_pass():
    model = _small_model()
    lr, ref, paste_ref, box = _inputs(29, 38, 4)
    calls = []

    def progress(done, total):
        calls.append((done, total))

    super_resolve(model, lr, ref, paste_ref, box, tile=11, progress=progress)
    tiles, body_tiles = len(split_tiles(32, 40, 11)), len(split_tiles(32, 40, 22))
    predictor_tiles = len(split_tiles(*paste_ref.shape[-2:], 11))  # the reference's grid
    total = 3 * tiles + predictor_tiles + 2 * body_tiles  # body and upsample passes: same tiles
    assert calls == [(i + 1, total) for i in range(total)]
    calls.clear()
    super_resolve(model, lr, ref, paste_ref, box, tile=None, progress=progress)
    assert calls == [(1, 1)]


def test_full_depth_model_halo_tiles_match():
    """All 16 blocks (halo 33): tiles smaller than the halo still give the untiled output."""
    model = SelfDZSR(4).eval()
    lr, ref, paste_ref, box = _inputs(21, 18, 4)
    whole = super_resolve(model, lr, ref, paste_ref, box, tile=None)
    torch.testing.assert_close(
        super_resolve(model, lr, ref, paste_ref, box, tile=8), whole, atol=1e-5, rtol=0
    )


def _predictor_embedding(net):
    lr, ref, fused = torch.rand(1, 3, 9, 11), torch.rand(1, 3, 36, 44), torch.rand(1, 64, 40, 48)
    return (
        net.predictor.embed,
        net.predictor.embed_halo,
        net.predictor.resized_inputs(lr, ref, fused),
    )


def _reference_encoding(net):
    return net.reference.encode, net.reference.encode_halo, (torch.rand(1, 3, 36, 44),)


@pytest.mark.parametrize(
    "stage,halo",
    [(_predictor_embedding, 2), (_reference_encoding, 5)],
    ids=["predictor.embed", "reference.encode"],
)
def test_local_stage_in_tiles_is_exact(stage, halo):
    """Local stages that sit between global ones (the degradation predictor's embedding on the
    reference's grid; the reference encoder, before the flow warp) run in tiles equal to running
    whole; with one pixel less of halo they do not (the predictor's global average and the warp
    after them would hide the difference from the SR output's tolerance)."""
    torch.manual_seed(0)
    net = SelfDZSR(4).restoration.eval()
    run, got_halo, inputs = stage(net)
    tiles = split_tiles(*inputs[0].shape[-2:], 10)
    with torch.no_grad():
        whole = run(*inputs)
        exact = tiled(run, got_halo, inputs, tiles)
        stale = tiled(run, got_halo - 1, inputs, tiles)
    assert got_halo == halo
    # Not bit for bit: a Winograd convolution's rounding (dzsr_kernels.conv3x3) depends on its 4x4
    # block's whole 6x6 input window, which near a window's edge holds zero padding, not pixels.
    torch.testing.assert_close(exact, whole, atol=1e-5, rtol=0)
    assert (stale - whole).abs().max() > 1e-4


def test_split_tiles_cover_exactly_once():
    for h, w, t in [(688, 1112, 384), (13, 7, 5), (8, 8, 100)]:
        cover = np.zeros((h, w), int)
        for y0, y1, x0, x1 in split_tiles(h, w, t):
            assert 0 < y1 - y0 <= t and 0 < x1 - x0 <= t
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()
    assert grow((2, 5, 0, 3), 3, 6, 4) == (0, 6, 0, 4)
    with pytest.raises(ValueError, match="tile"):
        split_tiles(4, 4, 0)


def test_stage_halos_of_the_default_model():
    """3x3 convs: head 1, reference estimator 1 + 1 + 2 (5x5 outputs), fusion 1, 16 blocks of two
    convs + the body tail 33, upsampler + tail 1/1 + 1/2 (+ 1/4 at x4) LR px, rounded up."""
    for scale in (2, 3, 4):
        net = SelfDZSR(scale).restoration
        halos = (
            net.lr_features_halo,
            net.reference.align.estimate_halo,
            net.align_lr_halo,
            net.fuse_halo,
            net.body_halo,
            net.upsample_halo,
        )
        assert halos == (1, 4, 0, 1, 33, 2)


def test_super_resolve_rejects_training_mode_and_bad_inputs():
    model = _small_model()
    lr, ref, paste_ref, box = _inputs(16, 16, 4)
    with pytest.raises(ValueError, match="eval mode"):
        super_resolve(model.train(), lr, ref, paste_ref, box)
    model.eval()
    with pytest.raises(ValueError, match="ref must be"):
        super_resolve(model, lr, ref[..., :15], paste_ref, box)
    with pytest.raises(ValueError, match="paste_box"):
        super_resolve(model, lr, ref, paste_ref, box + 20)


@pytest.mark.parametrize("region", ["full", "centre"])
def test_prepare_inputs_from_the_sample(region):
    s = load_sample("motorcycle", 4)
    x = prepare_inputs(s["short"], s["tele"], 4, region)
    h, w = x["lr"].shape[-2:]
    if region == "full":
        assert (h, w) == s["short"].shape[:2]
    y0, y1, x0, x1 = x["box"]
    assert x["ref"].shape[-2:] == (h, w)
    assert x["paste_ref"].shape[-2:] == (4 * (y1 - y0), 4 * (x1 - x0))
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
    assert x["paste_box"].tolist() == [list(x["box"])]
    # the aligned telephoto matches the LR it is pasted over (same scene, colour-matched)
    lr_box = x["lr"][0, :, y0:y1, x0:x1]
    down = torch.nn.functional.avg_pool2d(x["paste_ref"], 4)[0]
    assert (lr_box - down).abs().mean() < 0.06


def test_prepare_inputs_rejects_inconsistent_scale():
    s = load_sample("motorcycle", 4)
    with pytest.raises(ValueError, match="inconsistent with scale"):
        prepare_inputs(s["short"], s["tele"][:40, :60], 4)


def test_prepare_inputs_without_alignment_resizes_the_telephoto():
    s = load_sample("motorcycle", 4)
    x = prepare_inputs(s["short"], s["tele"], 4, align="never")
    y0, y1, x0, x1 = x["box"]
    assert (y1 - y0, x1 - x0) == (31, 46)  # the 1/4 focal-ratio crop of 125x185, untrimmed
    assert x["paste_ref"].shape[-2:] == (124, 184)
    with pytest.raises(ValueError, match="at least 48x48"):
        prepare_inputs(s["short"][:40], s["tele"], 4)
