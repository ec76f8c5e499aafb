"""``super_resolve(..., precision=...)``: bf16 quality against fp32 on the bundled real sample, the
stages that stay float32 (docs in ``dzsr.infer``, Precision), and the refused settings."""

from __future__ import annotations

import pytest
import torch

import dzsr_kernels
from dzsr.checkpoint import load_model
from dzsr.data.inputs import prepare_inputs
from dzsr.infer import autocast_dtype, super_resolve
from dzsr.sample import DEMO, load_sample

MIN_PSNR_DB = 40.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (both clamped, as ``dzsr sr`` writes them)."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).double().pow(2).mean()
    return float(10 * torch.log10(1 / mse))


@pytest.fixture(scope="module")
def demo_crop():
    """The shipped checkpoint and the demo pair's focal-ratio centre crop (LR 31x46: fast)."""
    sample = load_sample(DEMO, 4)
    x = prepare_inputs(sample["short"], sample["tele"], 4, region="centre")
    return load_model(), (x["lr"], x["ref"], x["paste_ref"], x["paste_box"])


def test_bf16_output_is_within_40_db_of_fp32_on_the_real_sample(demo_crop, bf16_on_any_cpu):
    model, inputs = demo_crop
    fp32 = super_resolve(model, *inputs, tile=16)
    bf16 = super_resolve(model, *inputs, tile=16, precision="bf16")
    untiled = super_resolve(model, *inputs, tile=None, precision="bf16")
    assert bf16.dtype == untiled.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # bf16 did run: its rounding shows
    assert psnr(bf16, fp32) >= MIN_PSNR_DB
    assert psnr(untiled, fp32) >= MIN_PSNR_DB


def _record_dtypes(model, monkeypatch) -> dict:
    """Output dtypes of named layers, and the dtype patch_match receives, during one call."""
    seen: dict = {}
    net = model.restoration
    layers = {
        "extractor": model.extractor.query_trunk,
        "lr head": net.head,
        "encoder": net.reference.encoder.convs[0],
        "estimator": net.reference.align.offsets.to_matrix,
        "warp": net.reference.warp,
        "transform": net.reference.align.deform,
        "body": net.body_tail,
        "upsampler": net.upsampler.convs[-1],
    }

    def hook(name):
        def record(module, args, out) -> None:
            seen.setdefault(name, out.dtype)

        return record

    for name, layer in layers.items():
        layer.register_forward_hook(hook(name))
    real = dzsr_kernels.patch_match

    def spy(query, ref, **kw):
        seen["patch_match"] = query.dtype
        return real(query, ref, **kw)

    monkeypatch.setattr(dzsr_kernels, "patch_match", spy)
    return seen


@pytest.mark.parametrize("tile", [16, None])
def test_bf16_lowers_the_convolutions_and_keeps_matching_and_sampling_float32(
    demo_crop, monkeypatch, tile, bf16_on_any_cpu
):
    model, inputs = demo_crop
    model = load_model()  # fresh: hooks stay on this copy
    seen = _record_dtypes(model, monkeypatch)
    super_resolve(model, *inputs, tile=tile, precision="bf16")
    f32, bf16 = torch.float32, torch.bfloat16
    assert seen == {
        "extractor": f32,
        "patch_match": f32,
        "warp": f32,
        "transform": f32,
        "lr head": bf16,
        "encoder": bf16,
        "estimator": bf16,
        "body": bf16,
        "upsampler": bf16,
    }


def test_precision_names_and_fp16_on_the_cpu_are_refused(demo_crop):
    model, inputs = demo_crop
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, fp16, got 'half'"):
        super_resolve(model, *inputs, precision="half")
    with pytest.raises(ValueError, match=r"fp16 is for CUDA devices.*use bf16"):
        super_resolve(model, *inputs, precision="fp16")
    assert autocast_dtype("fp32", "cpu") is None


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_needs_bfloat16_arithmetic(demo_crop, monkeypatch, native):
    """Accepted where the CPU has it, refused with one message (before any work) where PyTorch
    would emulate it; the detection reads the CPU's flags."""
    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: native)
    if native:
        assert autocast_dtype("bf16", "cpu", "--precision") == torch.bfloat16
    else:
        with pytest.raises(
            ValueError, match=r"--precision bf16 needs a CPU with bfloat16 arithmetic"
        ):
            autocast_dtype("bf16", "cpu", "--precision")
        model, inputs = demo_crop
        with pytest.raises(ValueError, match=r"^precision bf16 needs a CPU .* use fp32$"):
            super_resolve(model, *inputs, precision="bf16")
    assert autocast_dtype("bf16", "cuda") == torch.bfloat16  # CUDA: not this check


def test_native_bfloat16_follows_the_cpu_flags(monkeypatch):
    import dzsr.infer

    for caps, expected in [
        ({"avx512_bf16": True}, True),
        ({"amx_bf16": True, "avx512_bf16": False}, True),
        ({"bf16": True}, True),
        ({"avx2": True, "avx512_f": True, "avx512_bf16": False}, False),
    ]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert dzsr.infer.native_bfloat16() is expected


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_on_cuda_meet_the_bound(demo_crop, precision):
    model, inputs = demo_crop
    model = load_model().cuda()
    inputs = [t.cuda() for t in inputs]
    fp32 = super_resolve(model, *inputs, tile=16)
    low = super_resolve(model, *inputs, tile=16, precision=precision)
    assert low.dtype == torch.float32 and low.is_cuda
    assert psnr(low, fp32) >= MIN_PSNR_DB
