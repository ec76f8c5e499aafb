"""Bicubic initialisation of the restoration network (dzsr.models.bicubic_init, init.bicubic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dzsr.config import ConfigError, load_config
from dzsr.models import RestorationNet, SelfDZSR
from dzsr.models.bicubic_init import bicubic_fit_error, init_bicubic_


def _inputs(gen, scale, height, width):
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    box = torch.tensor([[4, 16, 6, 18]] * 2)
    return dict(
        lr=rand(2, 3, height, width),
        ref=rand(2, 3, height, width),
        paste_ref=rand(2, 3, 12 * scale, 12 * scale),
        paste_box=box,
    )


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fitted_upsampler_chain_is_bicubic(scale):
    assert bicubic_fit_error(scale) < 1e-8


@pytest.mark.parametrize(
    "scale,height,width,mode",
    [(4, 37, 45, "train"), (4, 28, 33, "eval"), (2, 30, 41, "eval"), (3, 29, 34, "train")],
)
def test_initialised_model_outputs_bicubic_away_from_the_border(scale, height, width, mode):
    gen = torch.Generator().manual_seed(scale * 100 + height)
    torch.manual_seed(height)
    model = SelfDZSR(scale).train(mode == "train")
    init_bicubic_(model.restoration)
    x = _inputs(gen, scale, height, width)
    extra = {}
    if (
        mode == "train"
    ):  # the pseudo-LR path with offsets and per-sample dropout: A = b = 0 regardless
        extra = dict(
            gt=torch.rand(2, 3, scale * height, scale * width, generator=gen),
            noise=torch.zeros(2, 3, height, width),
        )
    with torch.no_grad():
        sr = model(
            x["lr"], x["ref"], paste_ref=x["paste_ref"], paste_box=x["paste_box"], **extra
        ).sr
    bicubic = F.interpolate(x["lr"], scale_factor=scale, mode="bicubic", align_corners=False)
    m = 3 * scale  # zero padding of the convolutions changes the outermost LR pixels
    h_end = (height - 3) * scale  # and the bottom/right replicate padding to multiples of 4
    w_end = (width - 3) * scale
    interior = (sr - bicubic)[..., m:h_end, m:w_end]
    assert interior.numel() > 0.5 * sr[0].numel()
    assert interior.abs().max() < 1e-5


def test_it_changes_weights_only_and_training_reaches_the_body():
    torch.manual_seed(0)
    net = RestorationNet(4, drop_prob=0.0)
    names = {k: v.shape for k, v in net.state_dict().items()}
    count = sum(p.numel() for p in net.parameters())
    init_bicubic_(net)
    assert {k: v.shape for k, v in net.state_dict().items()} == names
    assert sum(p.numel() for p in net.parameters()) == count
    assert torch.count_nonzero(net.body_tail.weight) == 0

    model = SelfDZSR(4, drop_prob=0.0).train()
    model.restoration = net
    gen = torch.Generator().manual_seed(1)
    x = _inputs(gen, 4, 24, 24)
    out = model(
        x["lr"],
        x["ref"],
        paste_ref=x["paste_ref"],
        paste_box=x["paste_box"],
        gt=torch.rand(2, 3, 96, 96, generator=gen),
        noise=torch.zeros(2, 3, 24, 24),
    )
    (out.sr - torch.rand(2, 3, 96, 96, generator=gen)).abs().mean().backward()
    assert net.body_tail.weight.grad.abs().sum() > 0  # the residual blocks join once it moves
    # the zeroed offset estimators learn: the translation at once (it moves the centre tap), A once the
    # other taps or features reach the output
    assert all(ada.offsets.to_translation.weight.grad.abs().sum() > 0 for ada in net.align)


def test_config_key(tmp_path):
    from dzsr.train_parts import build_model

    config = load_config("sample_x4", ["init.bicubic=true"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    lr = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        sr = model(
            lr, lr, paste_ref=torch.rand(1, 3, 48, 48), paste_box=torch.tensor([[10, 22, 10, 22]])
        ).sr
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert (sr - bicubic)[..., 12:-12, 12:-12].abs().max() < 1e-5
    with pytest.raises(ConfigError, match="init.bicubic must be true or false, got 'yes please'"):
        build_model(load_config("sample_x4", ["init.bicubic=yes please"]))
