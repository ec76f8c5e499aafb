"""dzsr's own checkpoints: a whole SelfDZSR (training) or the networks inference needs.

One payload, two containers (``dzsr.checkpoint.storage``), chosen by the path's suffix:

* ``.pt`` (or any suffix but ``.safetensors``): ``torch.save`` of ``{"format": "dzsr-checkpoint",
  "version": 1, "dzsr_version", "torch_version", "config": model_config(model), "state_dict",
  "extra"}``. Training checkpoints stay in it: their ``extra`` holds optimiser and scheduler
  state and RNG states (tensors inside nested dicts), which safetensors cannot hold.
* ``.safetensors``: the state dict as the tensors; ``format``, ``version``, ``dzsr_version`` and
  ``torch_version`` as metadata strings, ``config`` and ``extra`` as JSON strings (so ``extra``
  must be JSON: e.g. the iteration, not optimiser state). What dzsr ships and recommends for
  sharing weights: no code runs on loading.

Both are written atomically (``dzsr.outputs.atomic_write``) and read back into the same payload
dict; ``load_checkpoint`` rebuilds the model from ``config``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..models import SelfDZSR
from .errors import raise_mismatch
from .storage import is_safetensors_path, read_with_metadata, write_file

FORMAT = "dzsr-checkpoint"
VERSION = 1
CONFIG_KEYS = ("scale", "drop_prob", "paste_prob")
_JSON_ENTRIES = ("version", "config", "extra")  # safetensors metadata strings that hold JSON


def model_config(model: SelfDZSR) -> dict:
    """The constructor arguments that rebuild ``model``: {"scale", "drop_prob", "paste_prob"}
    (SelfDZSR fixes its channels and blocks; the state dict's shapes carry them)."""
    return {
        "scale": model.scale,
        "drop_prob": model.restoration.align[0].drop_prob,
        "paste_prob": model.restoration.reference.paste_prob,
    }


def _to_metadata(payload: Mapping, path) -> dict[str, str]:
    """The payload's entries but ``state_dict`` as safetensors metadata strings."""
    meta = {k: str(v) for k, v in payload.items() if k not in _JSON_ENTRIES and k != "state_dict"}
    for key in _JSON_ENTRIES:
        try:
            meta[key] = json.dumps(payload[key], allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{os.fspath(path)}: the checkpoint's {key} cannot be stored in a "
                f".safetensors file ({err}); training state (optimisers, RNG) "
                f"needs a .pt file"
            ) from None
    return meta


def _from_metadata(tensors: dict, metadata: dict[str, str], path) -> dict:
    """A safetensors file's tensors and metadata -> the payload dict; ValueError naming ``path``
    when the metadata is not dzsr's."""
    if metadata.get("format") != FORMAT:
        got = f"format {metadata['format']!r}" if "format" in metadata else "no format entry"
        raise ValueError(
            f"{path} is not a dzsr checkpoint: its safetensors metadata has {got}, "
            f"expected format {FORMAT!r} with the model config"
        )
    payload = {**metadata, "state_dict": tensors}
    for key in _JSON_ENTRIES:
        if key in metadata:
            try:
                payload[key] = json.loads(metadata[key])
            except json.JSONDecodeError:
                raise ValueError(
                    f"{path} is a damaged dzsr checkpoint: its metadata {key} is not "
                    f"JSON: {metadata[key][:80]!r}"
                ) from None
    return payload


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The contents of a checkpoint file as the payload dict of the module docstring (whichever
    container), or whatever a foreign PyTorch file holds. A safetensors file without dzsr's
    metadata raises ValueError naming it."""
    obj, metadata = read_with_metadata(path)
    return obj if metadata is None else _from_metadata(obj, metadata, os.fspath(path))


def save_checkpoint(path: str | os.PathLike, model: SelfDZSR, extra: dict | None = None) -> None:
    """Write ``model`` (state dict + config + version metadata, plus ``extra``, e.g. optimiser
    state and iteration) to ``path`` atomically, in the container its suffix names (module
    docstring): a reader sees the old file or the complete new one."""
    from .. import __version__

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "dzsr_version": __version__,
        "torch_version": str(torch.__version__),
        "config": model_config(model),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    if is_safetensors_path(path):
        write_file(path, payload["state_dict"], _to_metadata(payload, path))
    else:
        write_file(path, payload)


def check_payload(ckpt: Mapping, path) -> None:
    """``ckpt`` (a payload with ``format == FORMAT``) has a version this dzsr reads and a usable
    ``config`` and ``state_dict``; raises ValueError naming ``path`` otherwise."""
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"{path} has checkpoint version {version!r}; this dzsr reads up to {VERSION}"
        )
    config, sd = ckpt.get("config"), ckpt.get("state_dict")
    if (
        not isinstance(config, Mapping)
        or set(config) - set(CONFIG_KEYS)
        or config.get("scale") not in (2, 3, 4)
    ):
        raise ValueError(
            f"{path} is a damaged dzsr checkpoint: its config must hold scale 2, 3 "
            f"or 4 (and drop_prob, paste_prob), got {config!r}"
        )
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(
            f"{path} is a damaged dzsr checkpoint: its state_dict must map names to tensors"
        )
    if not isinstance(ckpt.get("extra", {}), Mapping):
        raise ValueError(f"{path} is a damaged dzsr checkpoint: its extra must be a dict")


def is_ours(obj: Any) -> bool:
    """Whether a file's contents (``read_checkpoint``) are a dzsr payload."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def load_payload(ckpt: Mapping, model: SelfDZSR, name: str, strict: bool = True) -> None:
    """Load a checked payload's (``check_payload``) state dict into ``model``; mis-shaped keys,
    and with ``strict`` missing or unexpected ones, raise ``CheckpointMismatchError`` naming
    ``name`` (the file)."""
    expected, sd = model.state_dict(), ckpt["state_dict"]
    misshaped = [
        (k, sd[k].shape, expected[k].shape)
        for k in sd
        if k in expected and sd[k].shape != expected[k].shape
    ]
    raise_mismatch(
        f"checkpoint {name}",
        [k for k in expected if k not in sd] if strict else [],
        [k for k in sd if k not in expected] if strict else [],
        misshaped,
    )
    model.load_state_dict(sd, strict=strict)


def load_checkpoint(
    path: str | os.PathLike, model: SelfDZSR | None = None, strict: bool = True
) -> tuple[SelfDZSR, dict]:
    """Read a file written by ``save_checkpoint`` (either container); builds the model from its
    config when ``model`` is None. Returns (model, payload dict). Raises ValueError for other
    files or newer versions, ``CheckpointMismatchError`` for weights that do not fit ``model``."""
    ckpt = read_checkpoint(path)
    if not is_ours(ckpt):
        raise ValueError(
            f"{path} is not a dzsr checkpoint (for the authors' files use load_official)"
        )
    check_payload(ckpt, path)
    if model is None:
        model = SelfDZSR(**ckpt["config"])
    load_payload(ckpt, model, os.fspath(path), strict)
    return model, ckpt


def save_inference_checkpoint(
    path: str | os.PathLike, model: SelfDZSR, half: bool = True, extra: dict | None = None
) -> None:
    """Write the networks inference needs (restoration + extractor; KernelGen only trains), in
    float16 when ``half`` (``load_model`` reads them back into float32), with ``extra`` (JSON
    values for a ``.safetensors`` path) plus ``inference_only`` and ``half``. The container
    follows the suffix (module docstring); ``.safetensors`` is the recommended one."""
    slim = copy.deepcopy(model).cpu()
    slim.kernel_gen = torch.nn.Identity()
    if half:
        slim.half()
    save_checkpoint(path, slim, {**(extra or {}), "inference_only": True, "half": half})


__all__ = [
    "CONFIG_KEYS",
    "FORMAT",
    "VERSION",
    "check_payload",
    "is_ours",
    "load_checkpoint",
    "load_payload",
    "model_config",
    "read_checkpoint",
    "save_checkpoint",
    "save_inference_checkpoint",
]
