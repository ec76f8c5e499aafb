"""``dzsr export``: the test-time SelfDZSR as one ONNX graph (opset 19), dynamic height and width.

The graph (docs/design.md#export) takes ``lr`` (1,3,H,W) float32 in [0,1] (H, W >= 12, not
necessarily multiples of 4), ``ref`` (1,3,H,W), ``paste_ref`` (1,3,s·h,s·w) and ``paste_box``
int64 (1,4) (y0, y1, x0, x1) with y1-y0 = h, x1-x0 = w, the box inside the LR (as
``SelfDZSR.forward`` at test, ``dzsr.data.inputs.prepare_inputs`` makes them; the graph does not
check the box), and returns ``sr`` (1,3,sH,sW).

``ExportableSelfDZSR`` runs the model's public stages in ``SelfDZSR.forward``'s order (test mode:
the guide is the LR). Four steps of the eager forward are written in a traceable form here, since
the eager code branches on sizes or reads box values on the host: padding to multiples of 4
(always padded, by zero rows where none are needed), the predictor's LR crop and the paste (index
gathers driven by the box tensor), and the matching (``matching_offsets_op``, a custom op whose
eager implementation is the model's ``matching_offsets`` and whose ONNX form is in
``dzsr.onnx_ops``). The deformable convolutions stay the ``dzsr_kernels`` custom op, translated to
``DeformConv``; the P=0 AdaSTNs are 1x1 convolutions whose summed weights the exporter folds
into constants.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import dzsr_kernels
from dzsr_kernels.patch_match.reference import CHUNK_ELEMENTS

# The one import of the checkpoint loader in the export code, its tests and benchmark (which take
# it from here): it is moving to dzsr.checkpoint.
from .checkpoint import load_model
from .models import SelfDZSR
from .models.reference_branch import matching_offsets
from .models.selfdzsr import FEATURE_STRIDE, MIN_LR_SIZE
from .outputs import OutputError, atomic_write, check_output

OPSET = 19
INPUT_NAMES = ("lr", "ref", "paste_ref", "paste_box")
OUTPUT_NAME = "sr"
EXAMPLE_LR_SIZE = (50, 70)  # tracing example: not multiples of 4, height != width


@torch.library.custom_op("dzsr::matching_offsets", mutates_args=())
def matching_offsets_op(query_features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
    """The model's matching from the extractor's features (N,C,h,w) each: offsets (N,18,4h,4w)."""
    return matching_offsets(query_features, ref_features)


@matching_offsets_op.register_fake
def _(query_features, ref_features):
    n, _, h, w = query_features.shape
    return query_features.new_empty((n, 18, FEATURE_STRIDE * h, FEATURE_STRIDE * w))


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """``pad_to_feature_stride`` without its size test: (N,C,H,W) replicate-padded bottom/right to
    (N,C,4·ceil(H/4),4·ceil(W/4)), a zero-width pad where H or W is already a multiple of 4."""
    stride = FEATURE_STRIDE
    # ceil as (n + s - 1) // s: ONNX's integer Div truncates, so no floor division of negatives
    ph, pw = ((n + stride - 1) // stride * stride - n for n in x.shape[-2:])
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def crop_box(x: torch.Tensor, box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x[:, :, y0:y0+height, x0:x0+width]`` for x (1,C,H,W) and box int64 (1,4) (y0,y1,x0,x1)."""
    rows = box[0, 0] + torch.arange(height, device=x.device)
    cols = box[0, 2] + torch.arange(width, device=x.device)
    return x.index_select(2, rows).index_select(3, cols)


def paste_at_box(features: torch.Tensor, patch: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``features`` (1,C,H,W) with ``patch`` (1,C,h,w) written at box int64 (1,4) (y0,y1,x0,x1):
    what ``dzsr.models.reference_branch.paste`` does, as gathers and a select."""
    (height, width), (h, w) = features.shape[-2:], patch.shape[-2:]
    ys = torch.arange(height, device=features.device) - box[0, 0]
    xs = torch.arange(width, device=features.device) - box[0, 2]
    inside = ((ys >= 0) & (ys < h)).view(-1, 1) & ((xs >= 0) & (xs < w)).view(1, -1)
    spread = patch.index_select(2, ys.clamp(0, h - 1)).index_select(3, xs.clamp(0, w - 1))
    return torch.where(inside, spread, features)


class ExportableSelfDZSR(nn.Module):
    """``forward(lr, ref, paste_ref, paste_box) -> sr``: ``model(lr, ref, paste_ref=paste_ref,
    paste_box=paste_box).sr`` of an eval-mode SelfDZSR (batch 1), in traceable form (module
    docstring)."""

    def __init__(self, model: SelfDZSR):
        super().__init__()
        if not isinstance(model, SelfDZSR):
            raise TypeError(f"model must be a dzsr.models.SelfDZSR, got {type(model).__name__}")
        self.model = model
        self.eval()

    def forward(self, lr, ref, paste_ref, paste_box):
        """sr (1,3,sH,sW) of ``lr``, ``ref`` (1,3,H,W), ``paste_ref`` (1,3,s·h,s·w) and
        ``paste_box`` int64 (1,4) (y0,y1,x0,x1), through the model's stages and the traceable steps
        (module docstring)."""
        model, s = self.model, self.model.scale
        net = model.restoration
        branch = net.reference
        height, width = lr.shape[-2:]
        predictor_lr = crop_box(lr, paste_box, paste_ref.shape[-2] // s, paste_ref.shape[-1] // s)
        lr_p, ref_p = pad_to_stride(lr), pad_to_stride(ref)
        guide = net.lr_features(lr_p)
        feats = branch.features(ref_p, matching_offsets_op(*model.extractor(lr_p, ref_p)))
        feats = paste_at_box(feats, branch.paste_head(paste_ref), paste_box)
        r = branch.align.transform(feats, *branch.align.estimate(feats, guide))
        h = net.align_lr(guide, guide)
        fused = net.fuse(h, r)
        p = net.predictor(predictor_lr, paste_ref, fused)
        sr = net.upsample(net.body(fused, h, p))
        return sr[..., : s * height, : s * width]


def example_inputs(scale: int) -> tuple[torch.Tensor, ...]:
    """Random tracing inputs: LR ``EXAMPLE_LR_SIZE``, a centred paste box of 1/scale the size."""
    height, width = EXAMPLE_LR_SIZE
    bh, bw = height // scale, width // scale
    y0, x0 = (height - bh) // 2, (width - bw) // 2
    return (
        torch.rand(1, 3, height, width),
        torch.rand(1, 3, height, width),
        torch.rand(1, 3, scale * bh, scale * bw),
        torch.tensor([[y0, y0 + bh, x0, x0 + bw]], dtype=torch.int64),
    )


def dynamic_shapes(scale: int) -> tuple[dict, ...]:
    """H, W (lr, ref) and h, w (paste_ref is s·h x s·w) free; the batch and channels fixed."""
    dim = torch.export.Dim
    height, width = dim("height", min=MIN_LR_SIZE), dim("width", min=MIN_LR_SIZE)
    box_h, box_w = dim("box_height", min=1), dim("box_width", min=1)
    return ({2: height, 3: width}, {2: height, 3: width}, {2: scale * box_h, 3: scale * box_w}, {})


def check_exporter() -> None:
    """BackendUnavailableError (one line, saying what to install) unless the exporter can run
    here: onnx and onnxscript importable, and the cpp kernels built (the deformable convs reach
    the traced graph as their custom op, which the reference backend does not use)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise dzsr_kernels.BackendUnavailableError(
            f"ONNX export needs the onnx and onnxscript packages ({err}): "
            f"pip install 'dzsr[export]'"
        ) from None
    if "cpp" not in dzsr_kernels.available_backends("cpu", "deform_conv2d"):
        raise dzsr_kernels.BackendUnavailableError(
            "ONNX export needs the C++ kernels (dzsr info shows why they are unavailable)"
        )


def onnx_program(
    module: nn.Module,
    inputs: tuple,
    dynamic: tuple,
    input_names,
    output_names,
    chunk_elements: int = CHUNK_ELEMENTS,
):
    """``torch.onnx.export`` (dynamo, opset 19) of ``module`` called on example ``inputs``, with
    ``dynamic`` its ``dynamic_shapes`` and the dzsr custom ops translated by ``dzsr.onnx_ops``
    (``chunk_elements`` bounds the matching's scores per Loop iteration; the default is the
    reference backend's bound). Returns the ``torch.onnx.ONNXProgram``."""
    check_exporter()
    from . import onnx_matching, onnx_ops

    match = onnx_matching.matching_offsets_chunked(chunk_elements)
    table = {
        torch.ops.dzsr.deform_conv2d_packed.default: onnx_ops.deform_conv2d_packed,
        torch.ops.dzsr.matching_offsets.default: match,
        torch.ops.aten.upsample_bilinear2d.vec: onnx_ops.upsample_bilinear2d_vec,
    }
    with dzsr_kernels.use_backend("cpp"), torch.no_grad(), warnings.catch_warnings():
        # inputs sharing a Dim make torch.onnx warn about a (harmless) axis-name clash
        warnings.filterwarnings("ignore", message="# The axis name")
        return torch.onnx.export(
            module,
            inputs,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic,
            custom_translation_table=table,
            optimize=True,
            verbose=False,
        )


def to_onnx(model: SelfDZSR, chunk_elements: int = CHUNK_ELEMENTS):
    """The ``torch.onnx.ONNXProgram`` of ``ExportableSelfDZSR(model)`` (module docstring), the
    model first moved to float32 on the CPU (in place); ``chunk_elements`` as ``onnx_program``."""
    module = ExportableSelfDZSR(model.float().cpu())
    inputs = example_inputs(model.scale)
    model.check_inputs(inputs[0], inputs[1], paste_ref=inputs[2], paste_box=inputs[3])
    return onnx_program(
        module, inputs, dynamic_shapes(model.scale), INPUT_NAMES, [OUTPUT_NAME], chunk_elements
    )


def export_checkpoint(
    checkpoint: str | os.PathLike | None,
    out: str | os.PathLike,
    overwrite: bool = False,
    extractor: str | os.PathLike | None = None,
) -> str:
    """Write the ONNX graph of a checkpoint (None: the demo one) to ``out`` (``.onnx``), refused
    if it exists unless ``overwrite``, written atomically; returns ``out``."""
    out = check_output(out, "--out", (".onnx",), inputs=(checkpoint, extractor))
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"--out: {out} exists; pass --overwrite to replace it")
    check_exporter()
    program = to_onnx(load_model(checkpoint, extractor=extractor))
    data = program.model_proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return out
