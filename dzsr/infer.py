"""Seamless whole-image inference in exact halo tiles (``dzsr sr``).

``super_resolve(model, lr, ref, paste_ref, paste_box, tile=...)`` returns exactly what the untiled
``model(lr, ref, paste_ref=..., paste_box=...).sr`` returns (eval mode; equal up to float rounding,
tested within 1e-5), while the large intermediates (the upsampler's 256-channel maps at 2x and 4x
resolution, the convolution stages' activations) are bounded by the tile size; what stays global is
a few 64-channel maps at LR resolution, the extractor's features and the output:

Global, computed once for the whole (padded) image:
  * matching: extractor features of LR and reference, ``patch_match``, offsets (N,18,H,W);
  * the two deformable convolutions, with the selected ops backend: the flow warp of the reference
    encoder's features (its taps read the matched positions, which may be anywhere in the reference)
    and the reference AdaSTN (taps at q + A g + b). The fast kernels need no buffer beyond their
    output, so each costs one (N,64,H,W) map, like the other global maps;
  * the predictor's modulation vector, from the whole fused feature map.
Tiled (``tile`` x ``tile`` LR pixels, each computed on a window grown by the exact receptive-field
halo of its local stages and cropped back; zero padding only happens at true image borders):
  * pass A1 (halo 5): head conv (1) and the reference AdaSTN's offset estimator (3x3, 3x3, 5x5: 4)
    -> its (A, b) (N,6,H,W);
  * pass A2 (halo 2): head conv, P=0 LR AdaSTNs (pointwise), fusion conv (1) -> fused features and
    aligned LR features;
  * pass B (halo 2·blocks+1, on tiles ``BODY_TILE_FACTOR`` x larger: its per-pixel memory is small
    and its halo large): the 16 modulated residual blocks and the body tail, + LR features;
  * pass C (halo 2): pixel-shuffle upsampler and tail, written into the HR output.

Inputs from files (``prepare_inputs``): the LR is the whole short-focus image, as the authors' test
does (``--chop --full_res``: the whole LR image, the telephoto covering its centre 1/scale); the
telephoto is aligned onto the short-focus focal-ratio centre crop with ``dzsr.data.prepare_pair``
(DIS flow + colour match) and pasted there, and also serves, padded or cropped to the LR size, as
the matching reference. ``region="centre"`` instead super-resolves only that centre crop (the
training configuration, where the aligned telephoto is the ground truth).
"""
from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import (CheckpointMismatchError, check_payload, load_checkpoint, load_official, read_file,
                         unwrap_official)
from .data import prepare_pair, reference_box, to_float
from .models import SelfDZSR, matching_offsets
from .models.reference_branch import paste
from .models.selfdzsr import FEATURE_STRIDE, MIN_LR_SIZE, _check_image, _check_paste_box, _pad_to_multiple

DEFAULT_TILE = 384
BODY_TILE_FACTOR = 2  # pass B: small memory per pixel (64 channels), large halo -> larger tiles
DEMO_CHECKPOINT = "demo_x4.pt"

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- tiles


def split_tiles(height: int, width: int, tile: int) -> list[Box]:
    """Cover ``height x width`` with ``ceil(H/tile) x ceil(W/tile)`` near-equal boxes (y0,y1,x0,x1)."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of LR pixels, got {tile}")

    def cuts(n: int) -> list[int]:
        parts = math.ceil(n / tile)
        return [round(i * n / parts) for i in range(parts + 1)]

    ys, xs = cuts(height), cuts(width)
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def grow(box: Box, margin: int, height: int, width: int) -> Box:
    """``box`` grown by ``margin`` on every side, clipped to the image."""
    y0, y1, x0, x1 = box
    return max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)


def _crop(t: torch.Tensor, box: Box, within: Box | None = None) -> torch.Tensor:
    """``t[..., box]``; with ``within``, ``t`` holds the region ``within`` and box is absolute."""
    y0, y1, x0, x1 = box
    if within is not None:
        y0, y1, x0, x1 = y0 - within[0], y1 - within[0], x0 - within[2], x1 - within[2]
    return t[..., y0:y1, x0:x1]


def upsampler_halo(model: SelfDZSR) -> int:
    """LR-pixel halo of the upsampler + tail: each 3x3 conv at sub-pixel factor f reaches 1/f LR px."""
    reach, factor = 0.0, 1
    for f in model.restoration.upsampler.factors:
        reach += 1 / factor
        factor *= f
    return math.ceil(reach + 1 / factor)


# ----------------------------------------------------------------------------- the tiled forward


def _check_eval(model: SelfDZSR) -> None:
    if not isinstance(model, SelfDZSR):
        raise TypeError(f"model must be a dzsr.models.SelfDZSR, got {type(model).__name__}")
    if model.training:
        raise ValueError("super_resolve needs the model in eval mode (call model.eval()): training mode draws "
                         "random AdaSTN dropouts and pastes")


@torch.no_grad()
def super_resolve(model: SelfDZSR, lr: torch.Tensor, ref: torch.Tensor, paste_ref: torch.Tensor | None = None,
                  paste_box: torch.Tensor | None = None, predictor_lr: torch.Tensor | None = None,
                  predictor_ref: torch.Tensor | None = None, tile: int | None = DEFAULT_TILE) -> torch.Tensor:
    """SR of ``lr`` (N,3,H,W) -> (N,3,sH,sW), arguments as ``SelfDZSR.forward`` (test mode).

    tile: LR tile side for the local stages (module docstring); None runs the untiled forward.
    """
    _check_eval(model)
    if tile is None:
        return model(lr, ref, paste_ref=paste_ref, paste_box=paste_box, predictor_lr=predictor_lr,
                     predictor_ref=predictor_ref).sr
    _check_image("lr", lr)  # the untiled forward's checks, in its order
    height, width = lr.shape[-2:]
    if height < MIN_LR_SIZE or width < MIN_LR_SIZE:
        raise ValueError(f"lr must be at least {MIN_LR_SIZE}x{MIN_LR_SIZE}, got {height}x{width}")
    _check_image("ref", ref, lr, (height, width))
    if (paste_ref is None) != (paste_box is None):
        raise ValueError("give both paste_ref and paste_box, or neither")
    if paste_ref is not None:
        _check_image("paste_ref", paste_ref, lr)
        _check_paste_box(paste_box, paste_ref, model.scale, (height, width))
    predictor_lr, predictor_ref = model._predictor_inputs(lr, paste_ref, paste_box, predictor_lr, predictor_ref)

    net, s = model.restoration, model.scale
    lr_p, ref_p = _pad_to_multiple(lr, FEATURE_STRIDE), _pad_to_multiple(ref, FEATURE_STRIDE)
    hp, wp = lr_p.shape[-2:]
    tiles = split_tiles(hp, wp, tile)
    branch = net.reference

    offsets = matching_offsets(*model.extractor(lr_p, ref_p))
    feats = branch.warp(branch.encoder(ref_p), offsets)
    del offsets
    if paste_ref is not None:
        feats = paste(feats, branch.paste_head(paste_ref), paste_box, torch.ones(lr.shape[0], dtype=torch.bool))
    geometry = _pass_geometry(net, lr_p, feats, tiles)
    ref_ada = branch.align
    r = F.leaky_relu(ref_ada.deform(feats, geometry[:, :4], geometry[:, 4:]), 0.2)
    del feats, geometry
    fused, aligned = _pass_fuse(net, lr_p, r, tiles)
    del r
    p = net.predictor(predictor_lr, predictor_ref, fused)
    body = _pass_body(net, fused, aligned, p, split_tiles(hp, wp, BODY_TILE_FACTOR * tile))
    del fused, aligned
    out = _pass_upsample(model, body, tiles)
    return out[..., : s * height, : s * width]


def _head(net, lr_p: torch.Tensor, box: Box) -> torch.Tensor:
    """Head features (mean shift + 3x3 conv) exact on ``box``, from the LR grown by 1."""
    hp, wp = lr_p.shape[-2:]
    win = grow(box, 1, hp, wp)
    return _crop(net.head(net.head_mean(_crop(lr_p, win))), box, win)


def _pass_geometry(net, lr_p: torch.Tensor, feats: torch.Tensor, tiles: list[Box]) -> torch.Tensor:
    """Pass A1: the reference AdaSTN's (A, b) as (N,6,H,W), from the pasted reference features and
    the head features (its estimator: 3x3, 3x3, 5x5 convs, halo 4)."""
    hp, wp = lr_p.shape[-2:]
    geometry = feats.new_empty(feats.shape[0], 6, hp, wp)
    estimator = net.reference.align.offsets
    for box in tiles:
        win = grow(box, 4, hp, wp)
        A, b = estimator(_crop(feats, win), _head(net, lr_p, win))
        _crop(geometry, box)[...] = _crop(torch.cat([A, b], 1), box, win)
    return geometry


def _pass_fuse(net, lr_p: torch.Tensor, r: torch.Tensor, tiles: list[Box]):
    """Pass A2: fused features and P=0-aligned LR features, (N,64,H,W) each (fusion conv, halo 1)."""
    hp, wp = lr_p.shape[-2:]
    fused, aligned = torch.empty_like(r), torch.empty_like(r)
    for box in tiles:
        win = grow(box, 1, hp, wp)
        h = _head(net, lr_p, win)
        for ada in net.align:
            h = ada(h, None, use_offsets=False)
        f = F.leaky_relu(net.fusion(torch.cat([h, _crop(r, win)], 1)), 0.1)
        _crop(fused, box)[...] = _crop(f, box, win)
        _crop(aligned, box)[...] = _crop(h, box, win)
    return fused, aligned


def _pass_body(net, fused: torch.Tensor, aligned: torch.Tensor, p: torch.Tensor, tiles: list[Box]) -> torch.Tensor:
    """Pass B: residual blocks (modulated by p) + body tail + aligned LR features, (N,64,H,W)."""
    hp, wp = fused.shape[-2:]
    halo = 2 * len(net.blocks) + 1
    body = torch.empty_like(fused)
    for box in tiles:
        win = grow(box, halo, hp, wp)
        res = _crop(fused, win)
        for block in net.blocks:
            res = block(res, p)
        res = net.body_tail(res) + _crop(aligned, win)
        _crop(body, box)[...] = _crop(res, box, win)
    return body


def _pass_upsample(model: SelfDZSR, body: torch.Tensor, tiles: list[Box]) -> torch.Tensor:
    """Pass C: upsampler + tail per tile into the (N,3,sH,sW) output."""
    net, s = model.restoration, model.scale
    n, _, hp, wp = body.shape
    halo = upsampler_halo(model)
    out = body.new_empty(n, 3, s * hp, s * wp)
    for box in tiles:
        win = grow(box, halo, hp, wp)
        sr = net.tail_mean(net.tail(net.upsampler(_crop(body, win))))
        big = tuple(s * v for v in box)
        _crop(out, big)[...] = _crop(sr, big, tuple(s * v for v in win))
    return out


# ----------------------------------------------------------------------------- checkpoints


def demo_checkpoint_path() -> str:
    from importlib import resources

    return str(resources.files("dzsr.sample").joinpath(DEMO_CHECKPOINT))


def _official_scale(sd: dict) -> int:
    if any(k.startswith("up.1.") for k in sd):
        return 4
    up = sd.get("up.0.0.weight")
    if up is None:
        raise ValueError("not a SelfDZSR restoration (RefSR) state dict: no upsampler weights up.0.0.weight")
    return 3 if up.shape[0] == 64 * 9 else 2


def load_model(checkpoint: str | os.PathLike | None = None, scale: int | None = None,
               extractor: str | os.PathLike | None = None) -> SelfDZSR:
    """A SelfDZSR in eval mode from our checkpoint, or from the authors' ``RefSR_model_*.pth`` plus
    ``extractor`` (their ``Student_model_*.pth``). None loads the shipped demo checkpoint (x4).
    ``scale``, when given, must match the checkpoint's."""
    if checkpoint is None:
        checkpoint = demo_checkpoint_path()
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"no checkpoint given and the demo checkpoint {checkpoint} is not installed: "
                                    f"pass --ckpt")
    checkpoint = os.fspath(checkpoint)
    obj = read_file(checkpoint)
    if isinstance(obj, dict) and obj.get("format") == "dzsr-checkpoint":
        check_payload(obj, checkpoint)
        ckpt_scale = obj["config"]["scale"]
        if scale is not None and scale != ckpt_scale:
            raise ValueError(f"checkpoint {checkpoint} is for scale x{ckpt_scale}, not x{scale}")
        model = SelfDZSR(**obj["config"])
        partial = bool(obj.get("extra", {}).get("inference_only"))
        try:
            load_checkpoint(obj, model, strict=not partial)
        except CheckpointMismatchError as err:
            raise ValueError(str(err).splitlines()[0] + f" ({checkpoint})") from None
        if partial:
            missing = [k for k in model.state_dict() if k not in obj["state_dict"] and not k.startswith("kernel_gen.")]
            if missing:
                raise ValueError(f"inference checkpoint {checkpoint} lacks {len(missing)} weights, e.g. {missing[0]}")
        return model.eval()
    sd = unwrap_official(obj)
    ckpt_scale = _official_scale(sd)
    if scale is not None and scale != ckpt_scale:
        raise ValueError(f"checkpoint {checkpoint} is for scale x{ckpt_scale}, not x{scale}")
    if extractor is None:
        raise ValueError(f"{checkpoint} is an authors' RefSR file: also give their extractor (Student_model_*.pth)")
    model = SelfDZSR(ckpt_scale)
    try:
        load_official(model, restoration=sd, extractor=os.fspath(extractor))
    except CheckpointMismatchError as err:
        raise ValueError(str(err).splitlines()[0] + f" ({checkpoint})") from None
    return model.eval()


def save_inference_checkpoint(path: str | os.PathLike, model: SelfDZSR, half: bool = True, extra: dict | None = None) -> None:
    """Write the networks inference needs (restoration + extractor; KernelGen only trains), in
    float16 when ``half`` (loaded back into float32), in the ``dzsr.checkpoint`` format."""
    import copy

    from .checkpoint import save_checkpoint

    slim = copy.deepcopy(model).cpu()
    slim.kernel_gen = torch.nn.Identity()
    if half:
        slim.half()
    save_checkpoint(path, slim, {**(extra or {}), "inference_only": True, "half": half})


# ----------------------------------------------------------------------------- inputs from images


def _fit(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop and/or edge-pad an HWC image to ``height x width``."""
    h, w = img.shape[:2]
    y0, x0 = max(0, (h - height) // 2), max(0, (w - width) // 2)
    img = img[y0:y0 + min(h, height), x0:x0 + min(w, width)]
    ph, pw = height - img.shape[0], width - img.shape[1]
    return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0)


def prepare_inputs(short: np.ndarray, tele: np.ndarray, scale: int, region: str = "full", align: bool = True,
                   focal_ratio: float | None = None) -> dict:
    """Model inputs from a short-focus and a telephoto image (HWC, uint8/uint16/float).

    region ``full``: lr = the whole short-focus image; the telephoto, aligned onto its focal-ratio
    centre crop, is pasted there and (fitted to the LR size) is the matching reference.
    region ``centre``: lr = that centre crop; ref/paste = the centre 1/scale of the aligned telephoto
    (the dataset convention, where the aligned telephoto is the ground truth, returned as ``gt``).
    align False: the telephoto already shows exactly the centre crop; it is only resized.
    Returns tensors ``lr``, ``ref``, ``paste_ref``, ``paste_box`` (1,4) and ``box`` (the paste box).
    """
    if region not in ("full", "centre"):
        raise ValueError(f"region must be 'full' or 'centre', got {region!r}")
    short_f, tele_f = to_float(short), to_float(tele)
    need = max(MIN_LR_SIZE, 12) * scale  # the focal-ratio crop must be >= 12 px for the model and DIS flow
    if min(short_f.shape[:2]) < need:
        raise ValueError(f"short-focus image is {short_f.shape[0]}x{short_f.shape[1]}: at least {need}x{need} is "
                         f"needed at x{scale} (its 1/{scale} centre crop must be 12 px or more)")
    if align:
        pair = prepare_pair(short_f, tele_f, scale, focal_ratio)
        (cy0, cy1, cx0, cx1), t = pair["crop_box"], pair["trim"]
        box, aligned, centre_lr = (cy0 + t, cy1 - t, cx0 + t, cx1 - t), pair["gt"], pair["lr"]
    else:
        from .data import central_box
        from .data.prepare import _check_pair_geometry

        box = central_box(short_f.shape[0], short_f.shape[1], focal_ratio or 1.0 / scale)
        _check_pair_geometry(short_f.shape, tele_f.shape, box, scale)
        size = (scale * (box[3] - box[2]), scale * (box[1] - box[0]))
        aligned = np.clip(cv2.resize(tele_f, size, interpolation=cv2.INTER_AREA if tele_f.shape[1] > size[0]
                                     else cv2.INTER_CUBIC), 0, 1)
        centre_lr = short_f[box[0]:box[1], box[2]:box[3]]
    if region == "centre":
        h, w = centre_lr.shape[:2]
        rbox = reference_box(h, w, scale)
        y0, y1, x0, x1 = (scale * v for v in rbox)
        ref = aligned[y0:y1, x0:x1]
        return {"lr": _tensor(centre_lr), "ref": _tensor(_fit(ref, h, w)), "paste_ref": _tensor(ref),
                "paste_box": torch.tensor([rbox]), "box": rbox, "gt": _tensor(aligned)}
    h, w = short_f.shape[:2]
    return {"lr": _tensor(short_f), "ref": _tensor(_fit(aligned, h, w)), "paste_ref": _tensor(aligned),
            "paste_box": torch.tensor([box]), "box": box}
