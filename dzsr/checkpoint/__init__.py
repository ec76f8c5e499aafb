"""Every weights file dzsr reads or writes (docs/design.md#checkpoints), by kind:

* ours, whole (model + training state): ``save_checkpoint`` / ``load_checkpoint`` (``.pt``;
  ``dzsr train``);
* ours, inference-only (restoration + extractor, float16): ``save_inference_checkpoint`` /
  ``load_model`` (``.safetensors`` recommended, with the model config in its metadata; the shipped
  demo checkpoint is one);
* the authors' ``RefSR/KernelGen/Student_model_*.pth``: ``load_official``, ``load_model``
  (``to_official`` gives their key names back);
* published backbones (VGG-19, AlexNet) and LPIPS lin layers: ``read_state_dict``
  (``dzsr.pretrained`` finds them; never downloaded).

Modules: ``storage`` (the containers, PyTorch and safetensors: the only ``torch.load`` /
``torch.save`` / safetensors calls, and ``read_state_dict``), ``ours`` (our payload),
``official`` (the authors' key names, their scale), ``loading`` (``load_model``, the demo
checkpoint), ``errors`` (``CheckpointMismatchError``).
"""

from __future__ import annotations

from .errors import CheckpointMismatchError
from .loading import DEMO_CHECKPOINT, demo_checkpoint_path, load_model
from .official import (
    NETWORKS,
    REGULAR_MATRIX,
    convert_official,
    load_official,
    official_key_map,
    official_scale,
    to_official,
)
from .ours import (
    CONFIG_KEYS,
    FORMAT,
    VERSION,
    check_payload,
    is_ours,
    load_checkpoint,
    load_payload,
    model_config,
    read_checkpoint,
    save_checkpoint,
    save_inference_checkpoint,
)
from .storage import (
    SAFETENSORS_SUFFIX,
    as_state_dict,
    read_file,
    read_state_dict,
    read_with_metadata,
    write_file,
)

__all__ = [
    "CONFIG_KEYS",
    "CheckpointMismatchError",
    "DEMO_CHECKPOINT",
    "FORMAT",
    "NETWORKS",
    "REGULAR_MATRIX",
    "SAFETENSORS_SUFFIX",
    "VERSION",
    "as_state_dict",
    "check_payload",
    "convert_official",
    "demo_checkpoint_path",
    "is_ours",
    "load_checkpoint",
    "load_model",
    "load_official",
    "load_payload",
    "model_config",
    "official_key_map",
    "official_scale",
    "read_checkpoint",
    "read_file",
    "read_state_dict",
    "read_with_metadata",
    "save_checkpoint",
    "save_inference_checkpoint",
    "to_official",
    "write_file",
]
