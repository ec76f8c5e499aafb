"""Seamless whole-image inference in exact halo tiles (``dzsr sr``).

``super_resolve(model, lr, ref, paste_ref, paste_box, tile=...)`` returns what the untiled
``model(lr, ref, paste_ref=..., paste_box=...).sr`` returns (eval mode; equal up to float rounding,
tested within 1e-5), while the large intermediates (the upsampler's 256-channel maps at 2x and 4x
resolution, the convolution stages' activations) are bounded by the tile size; what stays global is
a few 64-channel maps at LR resolution, the extractor's features and the output.

It runs the model's own stages (``dzsr.models.selfdzsr``), in the order of their ``forward``:
the global ones (matching, the reference features and paste, the reference AdaSTN's deformable
conv, the degradation predictor's resize and average) once on the whole (padded) image, the local
ones tile by tile.
A local stage's output at a pixel depends only on its inputs within its halo, which the stage
computes from its own layers (``<stage>_halo``); ``tiled`` computes each ``tile`` x ``tile`` tile
on a window grown by that halo (its start moved back to a multiple of ``WINDOW_ALIGN``, for the
Winograd convolutions) and keeps the tile: the window's zero-padded edges only reach the
discarded margin, and zero padding happens at the true image borders as in the untiled forward.
Consecutive local stages share one pass, their halos adding up. The passes (halos of the
default model):

  * reference encoding: the reference branch's ``encode`` (5 x 1 px), before its global
    ``warp_encoded`` by the matching offsets;
  * geometry: ``lr_features`` then the reference AdaSTN's ``estimate`` (1 + 4 LR px) -> (A, b);
  * fuse: ``lr_features``, ``align_lr`` (P=0: per pixel), ``fuse`` (1 + 0 + 1 px) -> the fused and
    aligned LR features;
  * predictor embedding (``Predictor.embed``, on tiles of the predictor's reference grid: two 3x3
    convs, 2 px) between the predictor's ``resized_inputs`` and its ``reduce`` (strided convs and
    the global average, on the whole embedding): its 128-channel concatenation at the reference's
    full size is never built (on the CPU machine at LR 687x1111 the whole-image predictor added
    1.4 GiB to the peak once the extractor no longer set it);
  * body (on tiles ``BODY_TILE_FACTOR`` x larger: small memory per pixel, a large halo): the
    residual blocks and body tail (2 per block + 1 px);
  * upsample (on the body pass's tiles; halo 2 px): upsampler and tail, written into the
    (N,3,sH,sW) output. Inference computes this affine stage as one convolution of the LR features
    and a pixel shuffle (``RestorationNet.upsample``, ``dzsr.models.one_conv_upsample``), 48
    channels per LR pixel at x4 instead of the layers' 256-channel maps at 2x and 4x resolution
    (which needed tiles half the default size to bound the peak); each window recomputes its
    outermost LR pixel by the layers, since their intermediate zero padding differs there. On the
    CPU machine at LR 687x1111 float32: 3.6-4.0 s on 192-px tiles by the layers, 0.44 s now.

Precision (``precision=``, ``dzsr sr --precision``): ``fp32`` runs everything in float32. ``bf16``
and ``fp16`` run the model under ``torch.autocast(device, dtype)``, which lowers the plain
convolutions: the restoration network's ``lr_features``, ``align_lr`` (P=0: 1x1 convs), ``fuse``,
``body``, ``upsample`` and degradation predictor, the reference branch's encoder and paste head,
and the reference AdaSTN's offset estimator (so A and b are rounded to the lower precision before
they are used). These stay float32, whatever the setting (autocast is switched off inside them,
``dzsr.models.blocks.autocast_off``): ``SelfDZSR.match`` (the VGG extractor and the top-1 patch
match, an argmax that lower-precision features would reorder where correlations are close) and
both deformable convolutions (the reference warp and the reference AdaSTN's transform: sampling
positions, bilinear weights and the weighted sum, their inputs cast to float32 first). The tile
buffers of the lowered stages (geometry, fused and aligned features, body, SR) hold the lower
precision; the result is returned in ``lr``'s dtype (float32). ``fp16`` is refused on the CPU:
PyTorch's CPU float16 convolutions are emulated there and measured several times slower than
float32 on the development CPU (AVX-512 BF16, no FP16 arithmetic), while bf16 uses oneDNN's
native bfloat16 kernels. ``bf16`` is refused on a CPU without bfloat16 arithmetic
(``native_bfloat16``): PyTorch emulates it there, and the grouped convolutions of the offset
estimator and ``align_lr`` take a per-group fallback (on an AVX2-only CPU of the development
machine's kind, one 392x392 LR tile: estimator 2.19 s vs 0.19 s in float32, ``align_lr`` 1.16 s vs
0.019 s). Quality: the PSNR of bf16 against fp32 output on the bundled sample is
tested (>= 40 dB, tests/test_sr_precision.py) and stated in README.md.

The fast deformable-conv kernels need no buffer beyond their output, so each global warp costs one
(N,64,H,W) map. Each pass's output is allocated once, at its first tile; the per-tile activations
are the layers' own outputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from .data.crops import Box, scale_box
from .models import SelfDZSR
from .models.selfdzsr import memory_format_of, pad_to_feature_stride

DEFAULT_TILE = 384
# Tile windows start at multiples of 4 LR pixels: the CPU's 3x3 convolutions (Winograd,
# dzsr_kernels.conv3x3) compute 4x4 blocks anchored at their input's origin, so aligned windows
# put every kept pixel at the same place in its block as the untiled computation does; only
# blocks that read a window's zero padding round differently (tiled vs untiled within 1e-5; at
# LR 687x1111, 3e-7).
WINDOW_ALIGN = 4
BODY_TILE_FACTOR = 2  # body pass: small memory per pixel (64 channels), large halo -> larger tiles
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # -> autocast dtype

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------- tiles


def split_tiles(height: int, width: int, tile: int) -> list[Box]:
    """Cover ``height x width`` with ``ceil(H/tile) x ceil(W/tile)`` near-equal boxes (y0,y1,x0,x1)."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of LR pixels, got {tile}")

    def cuts(n: int) -> list[int]:
        parts = math.ceil(n / tile)
        return [round(i * n / parts) for i in range(parts + 1)]

    ys, xs = cuts(height), cuts(width)
    return [
        (ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(len(ys) - 1) for j in range(len(xs) - 1)
    ]


def grow(box: Box, margin: int, height: int, width: int) -> Box:
    """``box`` grown by ``margin`` on every side, clipped to the image."""
    y0, y1, x0, x1 = box
    return (
        max(0, y0 - margin),
        min(height, y1 + margin),
        max(0, x0 - margin),
        min(width, x1 + margin),
    )


def window(box: Box, halo: int, height: int, width: int) -> Box:
    """The region a tile is computed on: ``box`` grown by ``halo``, its start moved back to a
    multiple of ``WINDOW_ALIGN`` (more context never changes the kept pixels)."""
    y0, y1, x0, x1 = grow(box, halo, height, width)
    return (y0 - y0 % WINDOW_ALIGN, y1, x0 - x0 % WINDOW_ALIGN, x1)


def _crop(t: torch.Tensor, box: Box, within: Box | None = None) -> torch.Tensor:
    """``t[..., box]``; with ``within``, ``t`` holds the region ``within`` and box is absolute."""
    y0, y1, x0, x1 = box
    if within is not None:
        y0, y1, x0, x1 = y0 - within[0], y1 - within[0], x0 - within[2], x1 - within[2]
    return t[..., y0:y1, x0:x1]


class _Counter:
    """``step()`` calls ``progress(done, total)`` after each of ``total`` tile computations."""

    def __init__(self, total: int, progress: Progress | None):
        self.done, self.total, self.progress = 0, total, progress

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _output_like(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An uninitialised (N,C,height,width) buffer with t's dtype, device and memory format:
    channels-last tiles give a channels-last stage output, so the next stage's convolutions keep
    oneDNN's channels-last kernels (an NCHW buffer made the tiled bfloat16 upsampler 8x slower)."""
    return torch.empty(
        *t.shape[:2],
        height,
        width,
        dtype=t.dtype,
        device=t.device,
        memory_format=memory_format_of(t),
    )


def tiled(
    stage: Callable,
    halo: int,
    inputs: tuple[torch.Tensor, ...],
    tiles: list[Box],
    scale: int = 1,
    on_tile: Callable[[], None] | None = None,
):
    """A local stage run tile by tile: ``stage(*inputs)`` for (N,C,H,W) inputs, where the stage's
    output at a pixel depends only on its inputs within ``halo`` pixels and has ``scale`` x their
    resolution. Returns the stage's output (a tensor or a tuple, as the stage), each allocated
    (N,C',sH,sW) at the first tile; ``on_tile()`` is called after each tile."""
    height, width = inputs[0].shape[-2:]
    outs = None
    for box in tiles:
        win = window(box, halo, height, width)
        result = stage(*(_crop(x, win) for x in inputs))
        parts = result if isinstance(result, tuple) else (result,)
        if outs is None:
            outs = tuple(_output_like(t, scale * height, scale * width) for t in parts)
        big, big_win = scale_box(box, scale), scale_box(win, scale)
        for out, t in zip(outs, parts):
            _crop(out, big)[...] = _crop(t, big, big_win)
        if on_tile is not None:
            on_tile()
    return outs if isinstance(result, tuple) else outs[0]


# ----------------------------------------------------------------------------- the tiled forward


def _check_eval(model: SelfDZSR) -> None:
    if not isinstance(model, SelfDZSR):
        raise TypeError(f"model must be a dzsr.models.SelfDZSR, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "super_resolve needs the model in eval mode (call model.eval()): training mode draws "
            "random AdaSTN dropouts and pastes"
        )


def autocast_dtype(
    precision: str, device: torch.device | str, what: str = "precision"
) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of ``precision`` (``PRECISIONS``) on ``device``: None for fp32.
    ValueError naming ``what`` for an unknown name, for fp16 on the CPU and for bf16 on a CPU without
    bfloat16 arithmetic (module docstring, Precision)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "fp16" and on_cpu:
        raise ValueError(
            f"{what} fp16 is for CUDA devices: on the CPU float16 convolutions are "
            f"emulated and slower than fp32; use bf16 (or fp32) there"
        )
    if precision == "bf16" and on_cpu:
        check_cpu_bfloat16(f"{what} bf16", "fp32")
    return PRECISIONS[precision]


def native_bfloat16() -> bool:
    """Whether this machine's CPU has bfloat16 arithmetic that oneDNN uses: AVX-512 BF16 or AMX-BF16
    on x86, BF16 (NEON or SVE) on Arm (``torch.cpu.get_capabilities``)."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(k, False) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def check_cpu_bfloat16(what: str, instead: str) -> None:
    """ValueError naming ``what`` (the setting that asks for bfloat16 on the CPU) and the setting to
    use ``instead`` unless this CPU has bfloat16 arithmetic (``native_bfloat16``): without it
    PyTorch emulates bfloat16 and its convolutions run several times slower than float32."""
    if not native_bfloat16():
        name = torch.cpu.get_capabilities().get("cpu_name", "unknown")
        raise ValueError(
            f"{what} needs a CPU with bfloat16 arithmetic (AVX-512 BF16 or AMX on x86, "
            f"BF16 on Arm); this CPU ({name}) has none and PyTorch would emulate it, several "
            f"times slower than float32; use {instead}"
        )


def _autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def super_resolve(
    model: SelfDZSR,
    lr: torch.Tensor,
    ref: torch.Tensor,
    paste_ref: torch.Tensor | None = None,
    paste_box: torch.Tensor | None = None,
    predictor_lr: torch.Tensor | None = None,
    predictor_ref: torch.Tensor | None = None,
    tile: int | None = DEFAULT_TILE,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """SR of ``lr`` (N,3,H,W) -> (N,3,sH,sW) in ``lr``'s dtype (float32, whatever the precision;
    not clamped) and memory format, arguments as ``SelfDZSR.forward`` (test mode). The model runs
    on channels-last copies of the images whatever their layout: every convolution then takes
    oneDNN's (cuDNN's) channels-last kernels without reordering its input and output (on the CPU
    machine the reference encoder alone took 1.1-1.5 s on an NCHW LR 687x1111 image, 0.55 s
    channels-last, and the tiled bfloat16 upsampler 3.0-3.5 s vs 2.0-2.2 s).

    tile: LR tile side of the local stages (module docstring); None runs the untiled forward.
    progress: called as ``progress(done, total)`` after each tile of each pass, ``total`` being the
    number of tile computations of the whole call; the untiled forward counts as one.
    precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA only): the dtype of the convolution stages
    under ``torch.autocast``; matching and the deformable convolutions stay float32 (module
    docstring, Precision).
    """
    _check_eval(model)
    model.check_inputs(lr, ref, paste_ref=paste_ref, paste_box=paste_box)
    dtype = autocast_dtype(precision, lr.device)
    cl_lr, cl_ref, paste_ref, predictor_lr, predictor_ref = (
        None if x is None else x.contiguous(memory_format=torch.channels_last)
        for x in (lr, ref, paste_ref, predictor_lr, predictor_ref)
    )
    with _autocast(dtype, lr.device):
        if tile is None:
            sr = model(
                cl_lr,
                cl_ref,
                paste_ref=paste_ref,
                paste_box=paste_box,
                predictor_lr=predictor_lr,
                predictor_ref=predictor_ref,
            ).sr
            _Counter(1, progress).step()
        else:
            sr = _tiled_forward(
                model,
                cl_lr,
                cl_ref,
                paste_ref,
                paste_box,
                predictor_lr,
                predictor_ref,
                tile,
                progress,
            )
    return sr.to(lr.dtype).contiguous(memory_format=memory_format_of(lr))


def _tiled_forward(
    model: SelfDZSR,
    lr,
    ref,
    paste_ref,
    paste_box,
    predictor_lr,
    predictor_ref,
    tile: int,
    progress: Progress | None,
) -> torch.Tensor:
    """``super_resolve`` with tiles (module docstring), in the dtype autocast gives its stages."""
    predictor_lr, predictor_ref = model.predictor_inputs(
        lr, paste_ref, paste_box, predictor_lr, predictor_ref
    )
    net, branch = model.restoration, model.restoration.reference
    lr_p, ref_p = pad_to_feature_stride(lr), pad_to_feature_stride(ref)
    tiles = split_tiles(*lr_p.shape[-2:], tile)
    body_tiles = split_tiles(*lr_p.shape[-2:], BODY_TILE_FACTOR * tile)
    predictor_tiles = split_tiles(*predictor_ref.shape[-2:], tile)
    passes = 3 * len(tiles) + len(predictor_tiles) + 2 * len(body_tiles)  # upsample: body tiles
    counter = _Counter(passes, progress)

    offsets = model.match(lr_p, ref_p)
    encoded = tiled(branch.encode, branch.encode_halo, (ref_p,), tiles, on_tile=counter.step)
    feats = branch.warp_encoded(encoded, offsets)
    del encoded, offsets
    feats = branch.paste_reference(feats, paste_ref, paste_box)
    geometry = tiled(
        lambda x, f: branch.align.estimate(f, net.lr_features(x)),
        net.lr_features_halo + branch.align.estimate_halo,
        (lr_p, feats),
        tiles,
        on_tile=counter.step,
    )
    r = branch.align.transform(feats, *geometry)
    del feats, geometry

    def fuse(x, r):
        guide = net.lr_features(x)
        h = net.align_lr(guide, guide)
        return net.fuse(h, r), h

    fuse_halo = net.lr_features_halo + net.align_lr_halo + net.fuse_halo
    fused, h = tiled(fuse, fuse_halo, (lr_p, r), tiles, on_tile=counter.step)
    del r
    predictor = net.predictor
    embedded = tiled(
        predictor.embed,
        predictor.embed_halo,
        predictor.resized_inputs(predictor_lr, predictor_ref, fused),
        predictor_tiles,
        on_tile=counter.step,
    )
    p = predictor.reduce(embedded)
    del embedded
    body = tiled(
        lambda f, h: net.body(f, h, p), net.body_halo, (fused, h), body_tiles, on_tile=counter.step
    )
    del fused, h
    sr = tiled(net.upsample, net.upsample_halo, (body,), body_tiles, model.scale, counter.step)
    height, width = lr.shape[-2:]
    return sr[..., : model.scale * height, : model.scale * width]
