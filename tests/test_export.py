"""ONNX export (``dzsr export``, ``dzsr.export``): the graph run by ONNX Runtime on the CPU equals
PyTorch, on the bundled sample at two sizes (one export, dynamic height and width); the two
translated ops (DeformConv, the matching Loop) on their own; the command's output rules.

Agreement metric of the whole model: max |onnx - torch| / max |torch| over the output image."""

from __future__ import annotations

import collections
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import dzsr_kernels
from dzsr.cli import main
from dzsr.data.inputs import prepare_inputs
from dzsr.export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ExportableSelfDZSR,
    load_model,
    matching_offsets_op,
    onnx_program,
    to_onnx,
)
from dzsr.models import SelfDZSR
from dzsr.models.reference_branch import matching_offsets
from dzsr.sample import load_sample

TOLERANCE = 1e-4  # relative, the metric of the module docstring


def _session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, tensors) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, tensors)})


def _sample_inputs(name: str) -> tuple[torch.Tensor, ...]:
    sample = load_sample(name, 4)
    inputs = prepare_inputs(sample["short"], sample["tele"], 4)
    return tuple(inputs[k] for k in INPUT_NAMES)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> onnx.ModelProto:
    """The demo checkpoint exported by the command, over a file it must replace (--overwrite)."""
    path = tmp_path_factory.mktemp("export") / "demo.onnx"
    path.write_bytes(b"old")
    assert main(["export", "--out", str(path), "--overwrite"]) == 0
    return onnx.load(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["motorcycle", "coffee"])
def test_onnx_equals_pytorch_on_the_sample(demo_onnx, sample):
    """LR 125x185 (the demo pair) and 100x150: both sizes run by the one exported graph."""
    inputs = _sample_inputs(sample)
    model = load_model(None)
    with torch.no_grad():
        want = model(inputs[0], inputs[1], paste_ref=inputs[2], paste_box=inputs[3]).sr
    (got,) = _run(_session(demo_onnx.SerializeToString()), inputs)
    assert got.shape == tuple(want.shape) == (1, 3, 4 * inputs[0].shape[2], 4 * inputs[0].shape[3])
    error = np.abs(got - want.numpy()).max() / want.abs().max().item()
    assert error < TOLERANCE, f"relative max error {error:.2e}"


@pytest.mark.slow
def test_graph_contents(demo_onnx):
    """Opset 19; the two deformable convs as DeformConv, the P=0 AdaSTNs as constant 1x1 convs,
    the matching as one Loop; inputs and output with free height and width."""
    assert {o.domain: o.version for o in demo_onnx.opset_import}[""] == 19
    ops = collections.Counter(n.op_type for n in demo_onnx.graph.node)
    assert ops["DeformConv"] == 2 and ops["Loop"] == 1
    assert "ReduceSum" not in ops  # the P=0 weights are summed at export, not in the graph
    assert "Resize" not in ops  # every resize places its points as PyTorch does (gathers, lerps)
    one_by_one = [t for t in demo_onnx.graph.initializer if list(t.dims) == [64, 1, 1, 1]]
    assert len(one_by_one) == 3  # the three LR AdaSTNs
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(demo_onnx.graph.input) + list(demo_onnx.graph.output)
    }
    assert list(dims) == [*INPUT_NAMES, OUTPUT_NAME]
    assert dims["lr"][:2] == [1, 3] and all(isinstance(d, str) for d in dims["lr"][2:])
    assert dims["paste_box"] == [1, 4]


def _random_model(scale: int) -> SelfDZSR:
    """A SelfDZSR with 2 residual blocks and a reference AdaSTN whose taps land far from the
    centre, between pixels (its translation weights scaled up)."""
    model = SelfDZSR(scale)
    model.restoration.blocks = model.restoration.blocks[:2]
    with torch.no_grad():
        model.restoration.reference.align.offsets.to_translation.weight.mul_(30.0)
    return model.eval()


def _random_inputs(h: int, w: int, scale: int, y0: int, x0: int) -> tuple[torch.Tensor, ...]:
    """Random lr, ref (1,3,h,w) and the paste of an (h/scale)x(w/scale) box at (y0, x0)."""
    bh, bw = h // scale, w // scale
    paste_ref = torch.rand(1, 3, scale * bh, scale * bw)
    box = torch.tensor([[y0, y0 + bh, x0, x0 + bw]])
    return torch.rand(1, 3, h, w), torch.rand(1, 3, h, w), paste_ref, box


def test_exportable_module_equals_the_model():
    """The traceable composition (always-pad, gathered crop and paste) gives the model's output
    exactly, on sizes that are not multiples of 4 and an off-centre paste box."""
    model = _random_model(4)
    lr, ref, paste_ref, box = _random_inputs(30, 41, 4, 2, 27)
    with torch.no_grad():
        want = model(lr, ref, paste_ref=paste_ref, paste_box=box).sr
        got = ExportableSelfDZSR(model)(lr, ref, paste_ref, box)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_scale_2_export_at_two_sizes():
    """A x2 model (one upsampling stage, paste_ref twice the box) at two sizes, boxes off-centre."""
    model = _random_model(2)
    session = _session(to_onnx(model).model_proto.SerializeToString())
    for size, corner in [((29, 38), (3, 5)), ((44, 36), (20, 1))]:  # not / both multiples of 4
        inputs = _random_inputs(*size, 2, *corner)
        with torch.no_grad():
            want = model(inputs[0], inputs[1], paste_ref=inputs[2], paste_box=inputs[3]).sr
        (got,) = _run(session, inputs)
        error = np.abs(got - want.numpy()).max() / want.abs().max().item()
        assert got.shape == tuple(want.shape) and error < TOLERANCE, f"{size}: {error:.2e}"


class _DeformConvs(torch.nn.Module):
    """Both kinds of dzsr deformable conv: general offsets (with bias), then affine (no bias)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, 1, 3, 3))
        self.bias = torch.nn.Parameter(torch.randn(channels))

    def forward(self, x, offset, A, b):
        y = dzsr_kernels.deform_conv2d(x, offset, self.weight, self.bias, groups=x.shape[1])
        return dzsr_kernels.affine_deform_conv2d(y, A, b, self.weight, None, groups=x.shape[1])


def _geometry(h: int, w: int):
    """x, offsets, A, b with taps landing between pixels and outside the image."""
    return (
        torch.randn(1, 4, h, w),
        4 * torch.randn(1, 18, h, w),
        2 * torch.randn(1, 4, h, w),
        3 * torch.randn(1, 2, h, w),
    )


def test_deform_conv_translation():
    module = _DeformConvs().eval()
    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    dynamic = ({2: height, 3: width},) * 4
    program = onnx_program(module, _geometry(9, 13), dynamic, ["x", "offset", "A", "b"], ["y"])
    session = _session(program.model_proto.SerializeToString())
    for h, w in [(9, 13), (16, 7)]:
        inputs = _geometry(h, w)
        with dzsr_kernels.use_backend("cpp"), torch.no_grad():
            want = module(*inputs)
        (got,) = _run(session, inputs)
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


class _Resizes(torch.nn.Module):
    """The model's two bilinear resizes with aligned corners: by a factor (the extractor's 1/4)
    and to a size (the predictor's)."""

    def forward(self, x, like):
        quarter = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True)
        sized = F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)
        return quarter, sized


def test_aligned_resize_translation_places_its_points_as_pytorch():
    """Noise resized by 1/4 and to a larger size agrees to 1e-6 (ONNX's Resize: ~1e-4)."""
    dim = torch.export.Dim
    dynamic = ({2: dim("h", min=8), 3: dim("w", min=8)}, {2: dim("H", min=2), 3: dim("W", min=2)})
    example = (torch.randn(1, 8, 48, 64), torch.empty(1, 1, 100, 90))
    program = onnx_program(_Resizes().eval(), example, dynamic, ["x", "like"], ["quarter", "sized"])
    session = _session(program.model_proto.SerializeToString())
    for size, target in [((48, 64), (100, 90)), ((344, 556), (517, 301))]:
        inputs = (torch.randn(1, 8, *size), torch.empty(1, 1, *target))
        for got, want in zip(_run(session, inputs), _Resizes()(*inputs)):
            assert got.shape == tuple(want.shape)
            tolerance = 1e-6 * want.abs().max().item()
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tolerance)


class _Matching(torch.nn.Module):
    def forward(self, query, ref):
        return matching_offsets_op(query, ref)


def _features(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and reference features (1,8,h,w); the reference's bottom rows repeat (exact ties,
    which go to the smallest index) and one query pixel is all zero."""
    query, ref = torch.randn(1, 8, h, w), torch.randn(1, 8, h, w)
    ref[..., h // 2 :, :] = ref[..., h // 2 : h // 2 + 1, :]
    query[..., 1, 2] = 0
    return query, ref


def test_matching_translation_over_several_chunks():
    """The Loop with 5 or 6 reference patches per iteration (13 and 9 iterations, the last one
    partial) gives the model's offsets: integer flows, then bilinear x4 with aligned corners,
    which ONNX Runtime rounds differently (offsets of up to ~50 px: 1e-5 apart; a different match
    would move them by whole pixels)."""
    height, width = torch.export.Dim("height", min=3), torch.export.Dim("width", min=3)
    dynamic = ({2: height, 3: width},) * 2
    program = onnx_program(
        _Matching().eval(),
        _features(9, 11),
        dynamic,
        ["query", "ref"],
        ["offsets"],
        chunk_elements=5 * 7 * 9,
    )
    session = _session(program.model_proto.SerializeToString())
    for h, w in [(9, 11), (12, 7)]:
        query, ref = _features(h, w)
        (got,) = _run(session, (query, ref))
        np.testing.assert_allclose(got, matching_offsets(query, ref).numpy(), rtol=0, atol=1e-4)


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err and str(out) in err
    assert out.read_bytes() == b"keep me"


def test_output_extension_is_checked(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "model.pt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_missing_onnxscript_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    assert main(["export", "--out", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dzsr export: error:") and "dzsr[export]" in err
    assert not os.listdir(tmp_path)
