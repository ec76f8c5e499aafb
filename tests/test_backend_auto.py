"""Backend choice (``auto``: the per-device, per-op preference lists, measured orders in the README)
and each op's table ``KERNELS`` from backend name to kernel module."""

import importlib.util
import types

import pytest
import torch

import dzsr_kernels as dk
from dzsr_kernels import _backend
from dzsr_kernels.deform_conv import op as deform_conv_op
from dzsr_kernels.local_sliced_wasserstein import op as local_sliced_wasserstein_op
from dzsr_kernels.patch_match import op as patch_match_op
from dzsr_kernels.sliced_wasserstein import op as sliced_wasserstein_op

# Each op module and the functions its kernel modules implement (the interface in its docstring).
KERNEL_INTERFACES = [
    (deform_conv_op, ("forward", "backward")),
    (patch_match_op, ("match",)),
    (sliced_wasserstein_op, ("forward", "backward")),
    (local_sliced_wasserstein_op, ("forward", "backward")),
]


@pytest.mark.parametrize(
    "op_module, functions", KERNEL_INTERFACES, ids=lambda v: getattr(v, "OP", "")
)
def test_each_op_table_loads_its_kernel_modules(op_module, functions):
    assert _backend._OP_BACKENDS[op_module.OP] == {"reference", *op_module.KERNELS}
    for name, load in op_module.KERNELS.items():
        if name == "triton" and importlib.util.find_spec("triton") is None:
            continue  # an install without the optional triton: the backend is reported unavailable
        module = load()
        assert module.__name__ == f"{op_module.__package__}.{name}_kernel"
        assert all(callable(getattr(module, f)) for f in functions), (module.__name__, functions)


def test_the_custom_op_runs_the_kernel_its_table_names(monkeypatch):
    """The table is the one place an op looks its kernels up: replacing an entry reroutes calls."""
    sentinel = torch.full((1, 2, 5, 5), 7.0)
    fake = types.SimpleNamespace(forward=lambda *args: sentinel.clone())
    monkeypatch.setitem(deform_conv_op.KERNELS, "cpp", lambda: fake)
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, device, op: None)
    x, fn = _compiled_deform_conv()
    with dk.use_backend("cpp"):
        assert torch.equal(fn(x), sentinel)


def test_auto_follows_the_measured_order_per_device_and_op(monkeypatch):
    monkeypatch.delenv("DZSR_KERNELS_BACKEND", raising=False)
    # pretend every backend can run everywhere: the choice is then the head of each list
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, device, op: None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert {
        op: _backend.resolve(op, cpu)
        for op in ("deform_conv2d", "patch_match", "sliced_wasserstein")
    } == {"deform_conv2d": "cpp", "patch_match": "cpp", "sliced_wasserstein": "cpp"}
    assert {
        op: _backend.resolve(op, cuda)
        for op in ("deform_conv2d", "patch_match", "sliced_wasserstein")
    } == {"deform_conv2d": "cpp", "patch_match": "reference", "sliced_wasserstein": "reference"}
    # the local SW loss's CUDA kernel: 18-58x the reference on an H200 (BENCHMARKS.md)
    assert _backend.resolve("local_sliced_wasserstein", cpu) == "cpp"
    assert _backend.resolve("local_sliced_wasserstein", cuda) == "cpp"


def test_auto_skips_unavailable_backends(monkeypatch):
    monkeypatch.delenv("DZSR_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(
        _backend,
        "unavailable_reason",
        lambda name, device, op: None if name in ("triton", "reference") else "not built",
    )
    assert _backend.resolve("deform_conv2d", torch.device("cuda")) == "triton"
    assert _backend.resolve("deform_conv2d", torch.device("cpu")) == "reference"


def _compiled_deform_conv():
    x, A, b, w = (
        torch.randn(1, 2, 5, 5),
        torch.randn(1, 4, 5, 5),
        torch.randn(1, 2, 5, 5),
        torch.randn(2, 1, 3, 3),
    )
    return x, (lambda x: dk.affine_deform_conv2d(x, A, b, w, groups=2))


def test_backend_under_compile_is_chosen_at_trace_time(monkeypatch):
    """The documented rule (_backend's docstring): the selection active at the first compiled call is
    baked in; after torch.compiler.reset() a new selection takes effect."""
    resolved = []
    real_resolve = _backend.resolve

    def spy(op, device):
        resolved.append(real_resolve(op, device))
        return resolved[-1]

    monkeypatch.setattr(_backend, "resolve", torch.compiler.assume_constant_result(spy))
    x, fn = _compiled_deform_conv()
    other = "cpp" if "cpp" in dk.available_backends("cpu") else "triton"
    torch.compiler.reset()
    compiled = torch.compile(fn, fullgraph=True)
    with dk.use_backend("reference"):
        compiled(x)
    assert resolved == ["reference"]
    with dk.use_backend(other):
        compiled(x)
    assert resolved == ["reference"]  # the cached graph keeps its backend
    torch.compiler.reset()
    compiled = torch.compile(fn, fullgraph=True)
    with dk.use_backend(other):
        compiled(x)
    assert resolved == ["reference", other]
    torch.compiler.reset()


def test_use_backend_inside_a_fullgraph_compiled_region_is_refused():
    x, fn = _compiled_deform_conv()

    def inside(x):
        with dk.use_backend("reference"):
            return fn(x)

    torch.compiler.reset()
    with pytest.raises(Exception, match="ContextVar"):
        torch.compile(inside, fullgraph=True)(x)
    torch.compiler.reset()
