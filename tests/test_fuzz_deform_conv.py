"""Property-based fuzzing of the deformable convolution (hypothesis, profile "dzsr" of conftest.py).

1. Random valid problems — shapes (empty and one-pixel included), k in {1, 3}, groups, channel
   multipliers, affine or general geometry, dtypes, layouts, value regimes (normal, huge, tiny) and
   injected NaN/±Inf anywhere in x, geometry, weight or bias — on every CPU-reachable backend (cpp,
   cpp planar, the CUDA kernels under the emulation, triton under the interpreter with fewer
   examples): outputs and every gradient equal the reference's in the same dtype (NaN masks, ±Inf
   positions, close finite values).
2. Random, often invalid, argument shapes/types for the public API: either the call agrees with
   the reference or it raises one TypeError/ValueError whose message starts with an argument name.

Magnitudes: "huge" keeps products of three factors finite (float32 1e12, float16 300), so overflow
happens only where a NaN/Inf is injected; injected values then follow the rule of reference.py.
"""

import os

import pytest
import torch
from deform_conv_cases import (
    EMULATED,
    LAYOUTS,
    check_packed_against_reference,
    emulated_ops,
    layout,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import dzsr_kernels as dk

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HUGE = {torch.float64: 1e90, torch.float32: 1e12, torch.float16: 300.0, torch.bfloat16: 1e12}
TINY = {torch.float64: 1e-90, torch.float32: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-12}
SPECIALS = [float("nan"), float("inf"), -float("inf")]
TRITON = os.environ.get("TRITON_INTERPRET") == "1"
# The profile's example count; no example database (nothing written into the checkout).
FUZZ = settings(database=None)


@pytest.fixture(scope="module", autouse=True)
def _emulation():
    emulated_ops()


@st.composite
def problems(draw):
    """(x, geom, affine, weight, bias, groups) of a random valid problem."""
    dtype = draw(st.sampled_from(DTYPES))
    groups = draw(st.integers(1, 3))
    c_in_g, c_out_g = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    n, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 4)), draw(st.integers(0, 4))
    k = draw(st.sampled_from([1, 3]))
    affine = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def values(shape, spread):
        scale = draw(st.sampled_from(["normal", "huge", "tiny"]))
        t = spread * torch.randn(shape, generator=gen, dtype=torch.float64)
        t = t * {"normal": 1.0, "huge": HUGE[dtype], "tiny": TINY[dtype]}[scale]
        t = t.to(dtype)
        for _ in range(draw(st.integers(0, 2)) if t.numel() else 0):
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(SPECIALS))
        return t

    x = values((n, groups * c_in_g, h, w), 1.0)
    geom = values((n, 6 if affine else 2 * k * k, h, w), 2.0)
    if affine and draw(st.booleans()):  # near-identity A, the common case
        geom[:, :4] += torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype).view(1, 4, 1, 1)
    weight = values((groups * c_out_g, c_in_g, k, k), 1.0)
    bias = values((groups * c_out_g,), 1.0) if draw(st.booleans()) else None
    kind = draw(st.sampled_from(LAYOUTS))
    return layout(x, kind), layout(geom, kind), affine, layout(weight, kind), bias, groups


BACKENDS = ["cpp", "cpp-planar", EMULATED]


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(problem=problems())
def test_fuzz_backend_matches_reference(backend, problem):
    os.environ["DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES"] = (
        "0" if backend == "cpp-planar" else str(16 << 20)
    )
    try:
        check_packed_against_reference("cpp" if backend == "cpp-planar" else backend, *problem)
    finally:
        os.environ.pop("DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES")


@pytest.mark.skipif(
    not TRITON, reason="CPU tensors run Triton only under TRITON_INTERPRET=1 (set without a GPU)"
)
@settings(FUZZ, max_examples=min(8, FUZZ.max_examples))
@given(problem=problems())
def test_fuzz_triton_matches_reference(problem):
    check_packed_against_reference("triton", *problem)


ARG_NAMES = ("x", "A", "b", "offset", "weight", "bias", "groups")


@st.composite
def maybe_invalid_calls(draw):
    """Public-API arguments where each piece may be wrong: shape, size, dtype, type, groups."""
    n, c, h, w, k = 1, draw(st.integers(1, 4)), 3, 4, draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2, 0, -1, 1.5, True, "1"]))
    g = groups if isinstance(groups, int) and not isinstance(groups, bool) and groups > 0 else 1
    c_out = draw(st.sampled_from([c, 2 * c, 3]))

    def tensor(shape):
        bad = draw(st.sampled_from(["ok"] * 6 + ["dim", "size", "int", "float64", "list"]))
        if bad == "dim":
            shape = shape[1:]
        elif bad == "size" and shape:
            shape = (shape[0] + 1, *shape[1:])
        if bad == "list":
            return [1.0]
        t = torch.randn(shape)
        return {"int": t.long(), "float64": t.double()}.get(bad, t)

    affine = draw(st.booleans())
    x = tensor((n, c, h, w))
    geom = (
        (tensor((n, 4, h, w)), tensor((n, 2, h, w))) if affine else (tensor((n, 2 * k * k, h, w)),)
    )
    weight = tensor((c_out, max(c // g, 1), k, k))
    bias = tensor((c_out,)) if draw(st.booleans()) else None
    return affine, x, geom, weight, bias, groups


@FUZZ
@given(call=maybe_invalid_calls())
def test_fuzz_invalid_inputs_raise_one_clear_error(call):
    affine, x, geom, weight, bias, groups = call
    fn = dk.affine_deform_conv2d if affine else dk.deform_conv2d
    results = {}
    for backend in ("reference", "cpp"):
        try:
            with dk.use_backend(backend):
                results[backend] = fn(x, *geom, weight, bias, groups=groups)
        except (TypeError, ValueError) as e:
            assert str(e).split()[0].rstrip(",") in ARG_NAMES, (
                f"error does not start with an argument name: {e}"
            )
            results[backend] = type(e)
    assert results["reference"].__class__ == results["cpp"].__class__
    if isinstance(results["cpp"], torch.Tensor):
        torch.testing.assert_close(
            results["cpp"], results["reference"], rtol=1e-4, atol=1e-4, equal_nan=True
        )
    else:
        assert results["cpp"] is results["reference"]
