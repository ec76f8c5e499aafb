"""``auto`` backend choice: the per-device, per-op preference lists (measured orders, README)."""
import torch

from dzsr_kernels import _backend


def test_auto_follows_the_measured_order_per_device_and_op(monkeypatch):
    monkeypatch.delenv("DZSR_KERNELS_BACKEND", raising=False)
    # pretend every backend can run everywhere: the choice is then the head of each list
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, device, op: None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert {op: _backend.resolve(op, cpu) for op in ("deform_conv2d", "patch_match", "sliced_wasserstein")} == \
        {"deform_conv2d": "cpp", "patch_match": "cpp", "sliced_wasserstein": "cpp"}
    assert {op: _backend.resolve(op, cuda) for op in ("deform_conv2d", "patch_match", "sliced_wasserstein")} == \
        {"deform_conv2d": "cpp", "patch_match": "reference", "sliced_wasserstein": "reference"}


def test_auto_skips_unavailable_backends(monkeypatch):
    monkeypatch.delenv("DZSR_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "unavailable_reason",
                        lambda name, device, op: None if name in ("triton", "reference") else "not built")
    assert _backend.resolve("deform_conv2d", torch.device("cuda")) == "triton"
    assert _backend.resolve("deform_conv2d", torch.device("cpu")) == "reference"
