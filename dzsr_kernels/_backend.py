"""Backend names and the per-call choice between them.

Every op has a pure-PyTorch ``reference`` implementation (the oracle) and may have ``cpp``
(C++ CPU kernels and CUDA C++ kernels from ``csrc/``) and ``triton`` implementations. Each op's
``op.py`` holds its table ``KERNELS`` (backend name -> the module with its kernels, imported there
explicitly) and registers the names it implements here with ``register_op``; this module only
chooses a name, and the op's custom op calls ``KERNELS[name]()``. The ``triton_kernel`` modules are
imported on first use: triton is an optional dependency, and ``triton.jit`` builds interpreter
kernels only if ``TRITON_INTERPRET=1`` was set before the module defining them was imported.

Selection, strongest first:
  1. ``with dzsr_kernels.use_backend(name):`` (a context variable, so thread- and task-local);
  2. the ``DZSR_KERNELS_BACKEND`` environment variable;
  3. ``auto``: the first available entry of the op's preference list for the tensors' device
     (see ``AUTO_PREFERENCE``; the README explains the measurements behind it).

Under ``torch.compile`` the backend is resolved once, when Dynamo traces the call, and is part of the
compiled graph: enter ``use_backend`` (or set the variable) *around* the first call of the compiled
function. Changing the selection later does not recompile (no guard watches it); call
``torch.compiler.reset()`` or compile again. ``use_backend`` cannot be entered *inside* a compiled
region: Dynamo does not trace ``ContextVar.set`` (a graph break, an error under ``fullgraph=True``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

BACKENDS = ("reference", "cpp", "triton")

# Preference order used by ``auto``: device -> op -> backends in order ("*": every other op). CPU:
# cpp beats the reference everywhere (BENCHMARKS.md, 2-core CPU); the Triton interpreter is a test
# vehicle, never auto. CUDA, measured on an H200 (BENCHMARKS.md, 2026-12-04): cpp is the fastest
# deformable convolution and local SW loss (18-58x the reference); for patch matching and the SW
# loss PyTorch's own kernels (the reference: cuDNN conv2d, TF32 by default; torch.sort) are as fast
# as ours or faster at every measured size.
AUTO_PREFERENCE = {
    "cpu": {"*": ("cpp", "reference")},
    "cuda": {
        "*": ("cpp", "triton", "reference"),
        "patch_match": ("reference", "cpp", "triton"),
        "sliced_wasserstein": ("reference", "triton", "cpp"),
    },
}

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("dzsr_backend", default=None)

# op name -> set of backends that implement it
_OP_BACKENDS: dict[str, set[str]] = {}


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is requested that cannot run here; the message says why."""


def register_op(op: str, backends: set[str]) -> None:
    """Record that ``op`` is implemented by ``backends`` (names from ``BACKENDS``)."""
    _OP_BACKENDS[op] = set(backends)


def _triton_status(device_type: str) -> str | None:
    """None if Triton can run on ``device_type``, else the reason it cannot."""
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"
        )
    if device_type not in ("cpu", "cuda"):
        return f"Triton kernels are written for CUDA devices, not {device_type!r}"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"triton is not importable ({exc}); pip install triton"
    return None


def unavailable_reason(backend: str, device_type: str, op: str | None = None) -> str | None:
    """None if ``backend`` can run ``op`` on ``device_type``; otherwise a sentence saying why not."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'"
    if op is not None and backend not in _OP_BACKENDS.get(op, {"reference"}):
        return f"op {op!r} has no {backend!r} implementation (it has {sorted(_OP_BACKENDS[op])})"
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton_status(device_type)
    from . import _ext

    return _ext.unavailable_reason(device_type)


def available_backends(device: str | torch.device = "cpu", op: str | None = None) -> list[str]:
    """Backends that can run on ``device`` (and implement ``op`` when given)."""
    device_type = torch.device(device).type
    return [b for b in BACKENDS if unavailable_reason(b, device_type, op) is None]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` ('reference', 'cpp', 'triton' or 'auto')."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {name!r}")
    token = _selected.set(name)
    try:
        yield
    finally:
        _selected.reset(token)


def requested_backend() -> str:
    name = _selected.get() or os.environ.get("DZSR_KERNELS_BACKEND", "auto")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"DZSR_KERNELS_BACKEND must be one of {BACKENDS} or 'auto', got {name!r}")
    return name


@torch.compiler.assume_constant_result
def resolve(op: str, device: torch.device) -> str:
    """The backend that will run ``op`` on ``device`` now; raises if an explicit choice can't run.
    Under ``torch.compile`` the choice is made once, at trace time."""
    name = requested_backend()
    if name == "auto":
        order = AUTO_PREFERENCE.get(device.type, {})
        for candidate in order.get(op, order.get("*", ("reference",))):
            if unavailable_reason(candidate, device.type, op) is None:
                return candidate
        return "reference"
    reason = unavailable_reason(name, device.type, op)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {name!r} cannot run {op} on {device.type}: {reason}"
        )
    return name


def backend_table(ops: list[str] | None = None) -> dict[str, dict[str, str]]:
    """For each op and device type, the backend ``auto`` picks now (for logs and the CLI)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = {}
    for op in ops or sorted(_OP_BACKENDS):
        table[op] = {}
        for dev in devices:
            token = _selected.set("auto")
            try:
                table[op][dev] = resolve(op, torch.device(dev))
            finally:
                _selected.reset(token)
    return table
