"""LOSWLoss: SelfDZSR++'s local sliced-Wasserstein perceptual loss on VGG-19 features."""

import torch

import dzsr_kernels as dk
from dzsr.losses import SW_SCALE, LOSWLoss, losw_window
from dzsr_kernels.local_sliced_wasserstein.reference import local_sliced_wasserstein
from dzsr_kernels.sliced_wasserstein import draw_projections


def test_windows_are_the_authors_per_layer_sizes():
    """k = H//4//6, H//8//6, H//16//6 of a 192-pixel patch: 8, 4, 2 on its 48, 24, 12 maps."""
    assert [losw_window(s, s) for s in (48, 24, 12)] == [8, 4, 2]
    assert losw_window(6, 6) == 1 and losw_window(5, 9) == 1 and losw_window(30, 13) == 2


def test_formula_matches_authors_weighting():
    """0.08 * (LOSW(relu3_2) + LOSW(relu4_2) + 2 LOSW(relu5_2)), windows side // 6 at stride 2,
    C // 2 directions per layer drawn in layer order, ImageNet-normalised [0, 1] input."""
    loss_fn = LOSWLoss(weights=None)
    out, tgt = torch.rand(1, 3, 96, 112), torch.rand(1, 3, 96, 112)
    with dk.use_backend("cpp"):
        got = loss_fn(out, tgt, generator=torch.Generator().manual_seed(5))
    feats = loss_fn.vgg.features
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(5)
    expected = 0.0
    for idx, weight, window in ((13, 1.0, 4), (22, 1.0, 2), (31, 2.0, 1)):
        fo, ft = feats[: idx + 1]((out - mean) / std), feats[: idx + 1]((tgt - mean) / std)
        proj = draw_projections(fo.shape[1], fo.shape[1] // 2, g)
        expected += weight * local_sliced_wasserstein(fo, ft, proj, window, 2)
    torch.testing.assert_close(got, SW_SCALE * expected, rtol=1e-4, atol=1e-7)


def test_backprops_to_the_output_only():
    loss_fn = LOSWLoss(weights=None)
    out = torch.rand(2, 3, 48, 40, requires_grad=True)
    loss = loss_fn(out, torch.rand(2, 3, 48, 40))
    loss.backward()
    assert loss.shape == () and loss.item() > 0
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
