"""A SelfDZSR ready for inference from any checkpoint dzsr reads (``dzsr sr``, ``dzsr demo``)."""

from __future__ import annotations

import os

from ..models import SelfDZSR
from .errors import CheckpointMismatchError
from .official import load_official, official_scale
from .ours import check_payload, is_ours, load_payload, read_checkpoint
from .storage import as_state_dict

DEMO_CHECKPOINT = "demo_x4.safetensors"


def demo_checkpoint_path() -> str:
    """The path of the shipped demo checkpoint (x4, ``dzsr/sample/``; dzsr/sample/demo_x4.txt)."""
    from importlib import resources

    return str(resources.files("dzsr.sample").joinpath(DEMO_CHECKPOINT))


def _check_scale(path: str, found: int, wanted: int | None) -> None:
    if wanted is not None and wanted != found:
        raise ValueError(f"checkpoint {path} is for scale x{found}, not x{wanted}")


def _load_ours(path: str, ckpt: dict, scale: int | None) -> SelfDZSR:
    check_payload(ckpt, path)
    _check_scale(path, ckpt["config"]["scale"], scale)
    model = SelfDZSR(**ckpt["config"])
    partial = bool(ckpt.get("extra", {}).get("inference_only"))
    try:
        load_payload(ckpt, model, path, strict=not partial)
    except CheckpointMismatchError as err:
        raise ValueError(err.summary) from None
    if partial:
        missing = [
            k
            for k in model.state_dict()
            if k not in ckpt["state_dict"] and not k.startswith("kernel_gen.")
        ]
        if missing:
            raise ValueError(
                f"inference checkpoint {path} lacks {len(missing)} weights, e.g. {missing[0]}"
            )
    return model


def _load_authors(path: str, obj, scale: int | None, extractor) -> SelfDZSR:
    sd = as_state_dict(obj)
    found = official_scale(sd)
    _check_scale(path, found, scale)
    if extractor is None:
        raise ValueError(
            f"{path} is an authors' RefSR file: also give their extractor (Student_model_*.pth)"
        )
    model = SelfDZSR(found)
    try:
        load_official(model, restoration=sd, extractor=os.fspath(extractor))
    except CheckpointMismatchError as err:
        raise ValueError(f"{err.summary} ({path})") from None
    return model


def load_model(
    checkpoint: str | os.PathLike | None = None,
    scale: int | None = None,
    extractor: str | os.PathLike | None = None,
) -> SelfDZSR:
    """A SelfDZSR in eval mode (float32, CPU) from our checkpoint (``.safetensors`` or ``.pt``,
    whole or inference-only), or from the authors' ``RefSR_model_*.pth`` plus ``extractor``
    (their ``Student_model_*.pth``). None loads the shipped demo checkpoint (x4). ``scale``, when
    given, must match the checkpoint's. Every failure is one ValueError (FileNotFoundError for a
    missing file) naming the file."""
    if checkpoint is None:
        checkpoint = demo_checkpoint_path()
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"no checkpoint given and the demo checkpoint {checkpoint} is "
                f"not installed: pass --ckpt"
            )
    path = os.fspath(checkpoint)
    obj = read_checkpoint(path)
    model = (
        _load_ours(path, obj, scale) if is_ours(obj) else _load_authors(path, obj, scale, extractor)
    )
    return model.eval()


__all__ = ["DEMO_CHECKPOINT", "demo_checkpoint_path", "load_model"]
