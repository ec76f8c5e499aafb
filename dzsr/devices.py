"""The device a command or API call runs on, from a user's spec: ``auto`` (CUDA when available,
else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a CUDA device this machine does not
have, is one ``ValueError`` naming the argument (``what``: ``--device``, ``config key device``)."""

from __future__ import annotations

import torch


def check_device(spec: str, what: str) -> torch.device:
    """``torch.device(spec)`` if it is the CPU or an existing CUDA device here; else ValueError
    naming ``what``. ``auto`` is not accepted here: see ``resolve_device``."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what} {spec}: CUDA is not available on this machine (no GPU, or a CPU-only PyTorch)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{what} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_device(spec: str, what: str) -> torch.device:
    """``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; other specs as
    ``check_device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(spec, what)
