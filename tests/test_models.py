"""SelfDZSR networks: shapes, parameter counts, backend agreement, P=0 path, determinism, training."""

import pytest
import torch
import torch.nn.functional as F

import dzsr_kernels
from dzsr.losses import SelfDZSRObjective, kernel_centroid_loss, kernel_gen_loss
from dzsr.models import AdaSTN, KernelGen, MatchingExtractor, SelfDZSR, extractor, space_to_depth
from dzsr.models.blocks import conv_halo
from dzsr.models.selfdzsr import memory_format_of

FAST = [
    b
    for b in ("cpp",)
    if b in dzsr_kernels.available_backends("cpu", "deform_conv2d")
    and b in dzsr_kernels.available_backends("cpu", "patch_match")
]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def batch(scale, n=2, h=12, w=12, box=4):
    """A training batch as the authors' sampler builds it: the reference is an HR crop the size of
    the LR, pasted at an LR box of size h/scale-ish (here ``box``)."""
    lr, ref = torch.rand(n, 3, h, w), torch.rand(n, 3, h, w)
    paste_ref = torch.rand(n, 3, scale * box, scale * box)
    boxes = torch.tensor([[i, i + box, w - box - i, w - i] for i in range(n)])
    gt, noise = torch.rand(n, 3, scale * h, scale * w), 0.05 * torch.randn(n, 3, h, w)
    return dict(lr=lr, ref=ref, paste_ref=paste_ref, paste_box=boxes, gt=gt, noise=noise)


@pytest.mark.parametrize(
    "scale,restoration,kernel_gen", [(4, 2_054_265, 630_927), (2, 1_885_817, 515_727)]
)
def test_parameter_counts_equal_the_authors(scale, restoration, kernel_gen):
    model = SelfDZSR(scale)
    assert n_params(model.restoration) == restoration
    assert n_params(model.kernel_gen) == kernel_gen
    assert n_params(model.extractor) == 1_110_656


def test_space_to_depth_uses_the_authors_channel_order():
    x = torch.randn(2, 3, 8, 12)
    y = space_to_depth(x, 4)
    assert y.shape == (2, 48, 2, 3)
    for dy in range(4):
        for dx in range(4):
            for c in range(3):
                assert torch.equal(y[:, (dy * 4 + dx) * 3 + c], x[:, c, dy::4, dx::4])
    assert not torch.equal(y, F.pixel_unshuffle(x, 4))
    with pytest.raises(ValueError, match="divisible by scale=4"):
        space_to_depth(torch.randn(1, 3, 10, 12), 4)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(12, 12), (13, 18), (15, 14)])
def test_output_shapes_train_and_eval_including_odd_sizes(scale, size):
    h, w = size
    model = SelfDZSR(scale)
    b = batch(scale, h=h, w=w, box=3)
    out = model(**b)
    assert out.sr.shape == (2, 3, scale * h, scale * w)
    assert out.degraded.shape == out.pseudo_lr.shape == (2, 3, h, w)
    assert [k.shape[-1] for k in out.kernels] == [7, 5, 3]
    assert not out.pseudo_lr.requires_grad and out.pseudo_lr.min() >= 0 and out.pseudo_lr.max() <= 1
    model.eval()
    with torch.no_grad():
        sr = model(
            b["lr"], b["ref"], predictor_lr=b["lr"][:, :, :5, :5], predictor_ref=b["paste_ref"]
        ).sr
    assert sr.shape == (2, 3, scale * h, scale * w) and torch.isfinite(sr).all()


def test_odd_size_is_padded_by_replication_and_cropped():
    """An LR that is not a multiple of 4 runs as its replicate-padded version, cropped back."""
    model = SelfDZSR(2).eval()
    lr, ref = torch.rand(1, 3, 13, 15), torch.rand(1, 3, 13, 15)
    kw = dict(predictor_lr=torch.rand(1, 3, 4, 4), predictor_ref=torch.rand(1, 3, 8, 8))
    pad = lambda t: F.pad(t, (0, 1, 0, 3), mode="replicate")  # noqa: E731
    with torch.no_grad():
        sr = model(lr, ref, **kw).sr
        sr_padded = model(pad(lr), pad(ref), **kw).sr
    torch.testing.assert_close(sr, sr_padded[..., :26, :30], rtol=0, atol=0)


@pytest.mark.parametrize("size", [(12, 16), (13, 15)])  # without and with the internal padding
def test_output_comes_back_in_the_inputs_memory_format(size):
    model = SelfDZSR(2).eval()
    lr, ref = torch.rand(1, 3, *size), torch.rand(1, 3, *size)
    kw = dict(predictor_lr=torch.rand(1, 3, 4, 4), predictor_ref=torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        sr = model(lr, ref, **kw).sr
        assert sr.is_contiguous()
        assert sr.view(-1).numel() == 3 * 4 * size[0] * size[1]  # a user's view() works
        last = model(lr.contiguous(memory_format=torch.channels_last), ref, **kw).sr
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    torch.testing.assert_close(last, sr, rtol=0, atol=1e-5)


def test_conv_halo_from_kernel_and_dilation_and_refuses_what_tiles_cannot_cut():
    assert conv_halo(torch.nn.Conv2d(4, 4, 3, padding=1)) == 1
    assert conv_halo(torch.nn.Conv2d(4, 4, (3, 7), padding=(1, 3))) == 3
    assert conv_halo(torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2)) == 4
    assert conv_halo(torch.nn.Conv2d(4, 4, 1)) == 0
    for conv in (
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
        torch.nn.Conv2d(4, 4, 3),
        torch.nn.Conv2d(4, 4, 2, padding=1),
    ):
        with pytest.raises(ValueError, match="no pixel halo"):
            conv_halo(conv)


def _run(model, b, backend, seed):
    torch.manual_seed(seed)
    with dzsr_kernels.use_backend(backend):
        out = model(**b)
        loss = out.sr.square().mean() + out.degraded.abs().mean()
        # With every sample's offsets dropped (P=0) an offset estimator is unused: its grads are None.
        grads = torch.autograd.grad(
            loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True
        )
    return out.sr.detach(), grads


def _assert_backend_equals_reference(model, b, backend, seed):
    """Same seed (so the same drop/paste draws): outputs and parameter gradients agree."""
    sr_ref, g_ref = _run(model, b, "reference", seed)
    sr_fast, g_fast = _run(model, b, backend, seed)
    torch.testing.assert_close(sr_fast, sr_ref, rtol=1e-4, atol=1e-5)
    assert [g is None for g in g_fast] == [g is None for g in g_ref]
    # Rounding differences between backends occasionally flip a discrete choice (a ReLU or sign
    # at zero, a near-tie of the matching's argmax) and change a few gradient entries by more than
    # rounding: measured over 40 seeds, most runs stay within 4e-4 of this tolerance, 2 in 40 had
    # 0.03% of one parameter's entries beyond it, with or without the Winograd convolutions. A ReLU
    # flipped at one pixel changes its convolution's gradient in that output channel only, which
    # can be 1/C' of the entries (seed 1305011065 on an AVX-512 CPU: one channel of a residual
    # block's conv1, 0.11% of its weight's entries, 1 of its 64 biases). So the entries beyond
    # tolerance must be at most 0.1% of a parameter's or lie in one output channel.
    for gf, gr in zip(g_fast, g_ref):
        if gr is not None:
            tol = 1e-3 * gr.abs() + 1e-3 * gr.abs().max().item() + 1e-7
            beyond = (gf - gr).abs() > tol
            channels = int(beyond.reshape(beyond.shape[0], -1).any(1).sum())  # every param >= 1-D
            assert beyond.float().mean().item() <= 1e-3 or channels <= 1, (
                f"{beyond.float().mean().item():.2%} of a gradient's entries, in {channels} output "
                f"channels, differ beyond {tol.max()}"
            )


@pytest.mark.skipif(not FAST, reason="no fast CPU backend (C++ extension) could be built here")
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("scale", [2, 4])
def test_fast_backend_equals_reference_in_train_mode(backend, scale):
    model = SelfDZSR(scale, drop_prob=0.5, paste_prob=0.5)
    b = batch(scale, n=3, h=16, w=12)
    seed = int(torch.randint(0, 2**31, ()))
    _assert_backend_equals_reference(model, b, backend, seed)


@pytest.mark.skipif(not FAST, reason="no fast CPU backend (C++ extension) could be built here")
@pytest.mark.parametrize("backend", FAST)
def test_fast_backend_equals_reference_in_eval_mode(backend):
    model = SelfDZSR(4).eval()
    b = batch(4, h=13, w=16)
    outs = []
    for name in ("reference", backend):
        with dzsr_kernels.use_backend(name), torch.no_grad():
            outs.append(
                model(b["lr"], b["ref"], paste_ref=b["paste_ref"], paste_box=b["paste_box"]).sr
            )
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_p0_fast_path_equals_deformable_path_with_zero_offsets():
    ada = AdaSTN(8)
    x, target = torch.randn(2, 8, 7, 9), torch.randn(2, 8, 7, 9)
    zeros_a, zeros_b = torch.zeros(2, 4, 7, 9), torch.zeros(2, 2, 7, 9)
    fast = ada(x, target, use_offsets=False)
    with dzsr_kernels.use_backend("reference"):
        deform = F.leaky_relu(
            dzsr_kernels.affine_deform_conv2d(x, zeros_a, zeros_b, ada.deform.weight, groups=8), 0.2
        )
    torch.testing.assert_close(fast, deform, rtol=1e-5, atol=1e-6)
    ada.train()
    ada.drop_prob = 1.0  # every sample replaced by P=0 in training
    torch.testing.assert_close(ada(x, target), deform, rtol=1e-5, atol=1e-6)


def _distance_to_kinks(ada: AdaSTN, x: torch.Tensor, t: torch.Tensor) -> float:
    """How far (x, t) is from AdaSTN's non-differentiable set: the smallest |pre-activation| of its
    LeakyReLUs and distance of a bilinear sampling coordinate (q + A g + b) to an integer."""
    with torch.no_grad():
        est = ada.offsets
        h1 = est.pair_conv(torch.cat([x, t], 1))
        h2 = est.group_conv(F.leaky_relu(h1, 0.2))
        A, b = est(x, t)
        g = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype)
        gy, gx = (v.reshape(-1, 1, 1, 1, 1) for v in torch.meshgrid(g, g, indexing="ij"))
        qy, qx = torch.meshgrid(
            *(torch.arange(n, dtype=x.dtype) for n in x.shape[-2:]), indexing="ij"
        )
        coords = torch.cat(
            [qy + A[:, 0] * gy + A[:, 1] * gx + b[:, 0], qx + A[:, 2] * gy + A[:, 3] * gx + b[:, 1]]
        )
        frac = (coords - coords.round()).abs()
        out = ada.deform(x, A, b)
    return min(float(v.abs().min()) for v in (h1, h2, out, frac))


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_adastn_gradcheck_float64(backend):
    """Gradcheck at a point where AdaSTN is differentiable: finite differences (eps 1e-6) across a
    LeakyReLU kink or an integer sampling coordinate (bilinear) differ from any true gradient, so
    inputs are redrawn (from the seeded generator) until every kink is 1e-3 away."""
    ada = AdaSTN(2).double().train()
    for _ in range(100):  # about half the draws qualify
        x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
        t = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
        if _distance_to_kinks(ada, x, t) > 1e-3:
            break
    else:
        pytest.fail("no input 1e-3 away from AdaSTN's kinks in 100 draws")
    with dzsr_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: ada(a, b), (x, t), eps=1e-6, atol=1e-5)


def test_adastn_dropout_draws_per_sample():
    ada = AdaSTN(4, drop_prob=0.5).train()
    x, t = torch.randn(64, 4, 5, 5), torch.randn(64, 4, 5, 5)
    p0 = ada(x, t, use_offsets=False)
    out = ada(x, t)
    dropped = [torch.allclose(out[i], p0[i], atol=1e-6) for i in range(64)]
    assert 10 < sum(dropped) < 54  # Binomial(64, 0.5): some but not all samples replaced


def test_eval_is_deterministic_and_ignores_randomness():
    model = SelfDZSR(4).eval()
    b = batch(4, h=12, w=16)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(**b)
        torch.manual_seed(2)
        c = model(**b)
    assert torch.equal(a.sr, c.sr)


def test_paste_probability_zero_and_one_in_training_and_always_in_eval():
    model = SelfDZSR(2, drop_prob=0.0, paste_prob=0.0)
    b = batch(2)
    with torch.no_grad():
        no_paste = model(**b).sr
        model.restoration.reference.paste_prob = 1.0
        pasted = model(**b).sr
        model.eval()
        predictor = dict(
            predictor_lr=torch.stack(
                [
                    b["lr"][i, :, y0:y1, x0:x1]
                    for i, (y0, y1, x0, x1) in enumerate(b["paste_box"].tolist())
                ]
            ),
            predictor_ref=b["paste_ref"],
        )
        eval_pasted = model(
            b["lr"], b["ref"], paste_ref=b["paste_ref"], paste_box=b["paste_box"]
        ).sr
        eval_plain = model(b["lr"], b["ref"], **predictor).sr
    assert not torch.allclose(no_paste, pasted)
    assert not torch.allclose(eval_pasted, eval_plain)


def test_training_step_decreases_the_loss_on_a_fixed_batch():
    model = SelfDZSR(2)
    objective = SelfDZSRObjective(sw_loss=None)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    b = batch(2, n=2, h=12, w=12)
    losses = []
    for _ in range(4):
        torch.manual_seed(0)  # same dropout/paste draws every step
        total, parts = objective(model(**b), b["gt"], b["lr"])
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < losses[0], losses
    assert set(parts) == {"restoration_l1", "kernel_l1", "kernel_centroid"}


def test_extractor_is_frozen():
    ext = MatchingExtractor().train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    q, r = ext(torch.rand(1, 3, 13, 16), torch.rand(1, 3, 13, 16))
    assert q.shape == r.shape == (1, 256, 3, 4) and not q.requires_grad


def _trunk_full_then_resized(trunk, x):
    """The trunk as the authors compute it: conv3_1 on every pixel, then the 1/4 resize."""
    x = (x - trunk.mean) / trunk.std
    for name in ("conv1_1", "conv1_2", "conv2_1", "conv2_2"):
        x = F.relu(getattr(trunk, name)(x))
    return F.interpolate(trunk.conv3_1(x), scale_factor=0.25, mode="bilinear", align_corners=True)


@pytest.mark.parametrize("height,width", [(4, 4), (5, 7), (12, 13), (70, 9), (35, 97)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("band_rows", [1, 3, extractor.BAND_ROWS])
def test_trunk_equals_full_conv3_1_then_resize(height, width, layout, band_rows, monkeypatch):
    """The banded trunk, conv3_1 evaluated only at the resize's sample points (conv3x3_resized),
    equals the full convolutions followed by the bilinear resize: exactly in float64 up to
    rounding, at sizes where 4 does not divide the side, with bands of one, three and the default
    number of output rows (first, last and single bands; halos cut at the image border or not) and
    zero padding at every border."""
    monkeypatch.setattr(extractor, "BAND_ROWS", band_rows)
    torch.manual_seed(height * width)
    trunk = MatchingExtractor().query_trunk.double()
    for p in trunk.parameters():  # random weights with a sizeable bias
        p.data.normal_(0, 0.2)
    x = torch.rand(2, 3, height, width, dtype=torch.float64).contiguous(memory_format=layout)
    with torch.no_grad():
        got, want = trunk(x), _trunk_full_then_resized(trunk, x)
    assert got.shape == want.shape == (2, 256, height // 4, width // 4)
    assert got.is_contiguous(memory_format=torch.channels_last)
    scale = want.abs().max().item()  # rounding of the Winograd convolutions scales with the sums
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * max(scale, 1))
    with torch.no_grad():  # float32: the same up to float32 rounding of the sums
        got32 = trunk.float()(x.float())
    torch.testing.assert_close(got32, want.float(), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ref=torch.rand(2, 3, 12, 13)), r"ref must be \(N,3,12,12\)"),
        (dict(lr=torch.rand(2, 3, 11, 12), ref=torch.rand(2, 3, 11, 12)), "at least 12x12"),
        (dict(noise=None), "both gt and noise"),
        (dict(paste_box=torch.tensor([[0, 5, 0, 4], [0, 4, 0, 4]])), r"must be a 4x4 box"),
        (
            dict(paste_box=torch.zeros(2, 3, dtype=torch.long)),
            r"paste_box must be an integer tensor \(N=2, 4\)",
        ),
        (dict(paste_box=None), "both paste_ref and paste_box"),
        (dict(paste_box=torch.tensor([[0, 4, 10, 14], [0, 4, 0, 4]])), r"inside the 12x12 LR"),
        (dict(lr=torch.rand(2, 1, 12, 12)), r"lr must be a float tensor \(N,3,H,W\)"),
        (dict(paste_ref=None, paste_box=None), "give predictor_lr and predictor_ref"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    model = SelfDZSR(4, paste_prob=1.0)
    b = {**batch(4), **kwargs}
    with pytest.raises(ValueError, match=match):
        model(**b)


def test_kernel_gen_shapes_and_errors():
    kg = KernelGen(3)
    out, kernels = kg(torch.rand(1, 3, 27, 30), torch.rand(1, 3, 9, 10))
    assert out.shape == (1, 3, 9, 10) and len(kernels) == 3
    with pytest.raises(ValueError, match="gt must be 3x the LR size"):
        kg(torch.rand(1, 3, 27, 30), torch.rand(1, 3, 9, 9))


def test_centroid_loss_of_a_delta_kernel():
    k = 5
    w = torch.zeros(2, 3, k, k)
    w[:, :, 0, 3] = 1.0  # tap row offset -2, column offset +1
    assert kernel_centroid_loss(w).item() == pytest.approx((2 + 1) / k**2)
    centred = torch.zeros(2, 3, k, k)
    centred[:, :, 2, 2] = 1.0
    assert kernel_centroid_loss(centred).item() == 0.0
    with pytest.raises(ValueError, match="odd k"):
        kernel_centroid_loss(torch.zeros(1, 1, 4, 4))


def test_kernel_gen_loss_and_objective_add_up():
    model = SelfDZSR(2)
    b = batch(2)
    out = model(**b)
    sw_calls = []

    def fake_sw(sr, gt):
        sw_calls.append(sr.shape)
        return (sr - gt).square().mean()

    total, parts = SelfDZSRObjective(sw_loss=fake_sw, sw_weight=0.5)(out, b["gt"], b["lr"])
    k_total, k_parts = kernel_gen_loss(out.degraded, b["lr"], out.kernels)
    expected = F.l1_loss(out.sr, b["gt"]) + 0.5 * (out.sr - b["gt"]).square().mean() + k_total
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(
        k_parts["kernel_centroid"], 100 * sum(kernel_centroid_loss(w) for w in out.kernels).detach()
    )
    assert sw_calls == [out.sr.shape]
    with pytest.raises(ValueError, match="training forward"):
        SelfDZSRObjective()(type(out)(sr=out.sr), b["gt"], b["lr"])


@pytest.fixture
def exact_float32_cuda():
    """cuDNN convolutions default to TF32: the reference patch matching (conv2d) then picks other
    indices than the exact float32 kernels (seen failing on an H200 before this fixture existed)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_cuda_backends_equal_reference_in_train_and_eval(backend, exact_float32_cuda):
    model = SelfDZSR(4, drop_prob=0.5, paste_prob=0.5).cuda()
    b = {k: v.cuda() if k != "paste_box" else v for k, v in batch(4, n=3, h=20, w=16).items()}
    seed = int(torch.randint(0, 2**31, ()))
    _assert_backend_equals_reference(model, b, backend, seed)
    model.eval()
    with torch.no_grad():
        outs = []
        for name in ("reference", backend):
            with dzsr_kernels.use_backend(name):
                outs.append(
                    model(b["lr"], b["ref"], paste_ref=b["paste_ref"], paste_box=b["paste_box"]).sr
                )
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (5, 7), (13, 9)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsample_as_one_conv_equals_the_layers(scale, height, width, layout):
    """Inference's upsample (one composed convolution and a pixel shuffle, the border ring by the
    layers) equals the upsampler, tail conv and mean shift run layer by layer (what autograd
    runs): to float64 rounding, at sizes where the border strips overlap or cover the whole
    image, in the input's memory format; and in float32 to its rounding."""
    torch.manual_seed(scale * 100 + height)
    net = SelfDZSR(scale).restoration.eval().double()
    for p in net.parameters():  # random weights with sizeable biases
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 64, height, width, dtype=torch.float64).contiguous(memory_format=layout)
    layers = net.upsample(x)  # grad enabled: the layers
    with torch.no_grad():
        got = net.upsample(x)
    assert got.shape == (2, 3, scale * height, scale * width)
    assert got.is_contiguous(memory_format=memory_format_of(x))  # 1x1: NCHW whatever asked
    torch.testing.assert_close(got, layers, rtol=0, atol=1e-12 * layers.abs().max().item())
    net.float()
    with torch.no_grad():
        got32 = net.upsample(x.float())
    torch.testing.assert_close(got32, layers.float(), rtol=0, atol=1e-5 * layers.abs().max().item())


def test_one_conv_upsample_follows_weight_edits():
    """The composed weights are composed again after any parameter changes, also through
    ``.data`` (which leaves no version mark) and after a dtype change."""
    torch.manual_seed(0)
    net = SelfDZSR(4).restoration.eval()
    x = torch.randn(1, 64, 6, 7)
    with torch.no_grad():
        before = net.upsample(x)
        net.tail.weight.data[0, 0, 1, 1] += 1.0
        after = net.upsample(x)
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, net.upsample(x).detach(), rtol=0, atol=1e-5)
