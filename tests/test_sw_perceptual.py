"""SWLoss (VGG-19 sliced-Wasserstein perceptual loss) and offline weight loading."""

import copy

import pytest
import torch
import torchvision

import dzsr_kernels as dk
from dzsr.losses import SW_SCALE, VGG19_FILE, SWLoss, VGG19Features
from dzsr_kernels.sliced_wasserstein import draw_projections
from dzsr_kernels.sliced_wasserstein.reference import sliced_wasserstein


def test_random_weights_run_and_backprop():
    loss_fn = SWLoss(weights=None).train()
    assert not loss_fn.vgg.training
    assert all(not p.requires_grad for p in loss_fn.parameters())
    assert len(loss_fn.vgg.features) == 32  # VGG-19 runs only up to relu5_2
    out = torch.rand(2, 3, 36, 44, requires_grad=True)
    loss = loss_fn(out, torch.rand(2, 3, 36, 44))
    loss.backward()
    assert loss.shape == () and loss.item() > 0
    assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())


def test_formula_matches_authors_weighting():
    """0.08 * (SW(relu3_2) + SW(relu4_2) + 2 SW(relu5_2)), ImageNet-normalised [0, 1] input."""
    loss_fn = SWLoss(weights=None)
    out, tgt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    got = loss_fn(out, tgt, generator=torch.Generator().manual_seed(5))
    feats = loss_fn.vgg.features
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(5)
    expected = 0.0
    for idx, weight in ((13, 1.0), (22, 1.0), (31, 2.0)):
        fo, ft = feats[: idx + 1]((out - mean) / std), feats[: idx + 1]((tgt - mean) / std)
        expected += weight * sliced_wasserstein(
            fo, ft, draw_projections(fo.shape[1], fo.shape[1] // 2, g)
        )
    torch.testing.assert_close(got, SW_SCALE * expected, rtol=1e-4, atol=1e-7)


def test_layers_match_torchvision_vgg19():
    """Same module indices and state-dict keys/shapes as torchvision's vgg19().features."""
    with torch.device("meta"):
        tv = torchvision.models.vgg19(weights=None).features
    ours = VGG19Features(("relu5_2",), weights=None).features
    assert [type(m) for m in ours] == [type(m) for m in tv[:32]]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in tv[:32].state_dict().items()
    }


def test_vgg_runs_channels_last_and_returns_contiguous_maps():
    vgg = VGG19Features(("relu3_2", "relu5_2"), weights=None)
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in vgg.features
        if isinstance(m, torch.nn.Conv2d)
    )
    images = torch.rand(2, 3, 28, 40).transpose(2, 3)  # non-contiguous input
    got = vgg(images)
    plain = copy.deepcopy(vgg.features).to(memory_format=torch.contiguous_format)
    x = (images - vgg.mean) / vgg.std
    for idx, name in ((13, "relu3_2"), (31, "relu5_2")):
        assert got[name].is_contiguous()
        torch.testing.assert_close(got[name], plain[: idx + 1](x), rtol=1e-4, atol=1e-5)


def test_bfloat16_vgg_is_close_to_float32_and_backprops():
    out = torch.rand(2, 3, 48, 40, requires_grad=True)
    tgt = torch.rand(2, 3, 48, 40)
    ref_fn = SWLoss(weights=None)
    fast_fn = SWLoss(weights=None, vgg_dtype=torch.bfloat16)
    fast_fn.load_state_dict(ref_fn.state_dict())
    ref = ref_fn(out, tgt, generator=torch.Generator().manual_seed(3))
    fast = fast_fn(out, tgt, generator=torch.Generator().manual_seed(3))
    assert fast.dtype == torch.float32 and ref.dtype == torch.float32
    torch.testing.assert_close(
        fast, ref, rtol=0.05, atol=0
    )  # bfloat16 features: ~3 significant digits
    (g_ref,) = torch.autograd.grad(ref, out)
    (g_fast,) = torch.autograd.grad(fast, out)
    assert torch.isfinite(g_fast).all()
    cos = torch.nn.functional.cosine_similarity(g_fast.flatten(), g_ref.flatten(), dim=0)
    assert cos > 0.9
    with pytest.raises(TypeError, match="vgg_dtype must be"):
        SWLoss(weights=None, vgg_dtype=torch.int8)


def test_backends_agree_on_swloss():
    loss_fn = SWLoss(weights=None)
    out, tgt = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    values = {}
    for backend in ("reference", "cpp"):
        with dk.use_backend(backend):
            values[backend] = loss_fn(out, tgt, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(values["cpp"], values["reference"], rtol=1e-4, atol=1e-7)


def test_missing_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=VGG19_FILE) as info:
        SWLoss()
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    with pytest.raises(FileNotFoundError, match=VGG19_FILE):
        SWLoss(weights=str(tmp_path / "nowhere" / VGG19_FILE))


def test_loads_a_saved_state_dict(tmp_path, monkeypatch):
    source = VGG19Features(("relu3_2",), weights=None)
    state = {f"features.{k}": t for k, t in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # other keys of a full checkpoint are ignored
    file = tmp_path / VGG19_FILE
    torch.save(state, file)
    for weights in (str(file), str(tmp_path)):
        loaded = VGG19Features(("relu3_2",), weights=weights)
        for a, b in zip(
            loaded.features.state_dict().values(),
            source.features.state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / VGG19_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    default = VGG19Features(("relu3_2",))
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(default(x)["relu3_2"], source(x)["relu3_2"])


def test_full_swloss_checkpoint_round_trip(tmp_path):
    source = SWLoss(weights=None)
    torch.save(
        {f"features.{k}": t for k, t in source.vgg.features.state_dict().items()},
        tmp_path / VGG19_FILE,
    )
    loaded = SWLoss(weights=str(tmp_path / VGG19_FILE))
    out, tgt = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    a = source(out, tgt, generator=torch.Generator().manual_seed(2))
    b = loaded(out, tgt, generator=torch.Generator().manual_seed(2))
    assert a.item() == b.item()


def test_bad_inputs():
    loss_fn = SWLoss(weights=None)
    with pytest.raises(ValueError, match="shape of output"):
        loss_fn(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 20))
    with pytest.raises(ValueError, match=r"RGB \(N, 3, H, W\)"):
        loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="unknown VGG-19 layers"):
        VGG19Features(("relu9_9",), weights=None)
