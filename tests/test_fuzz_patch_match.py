"""Property-based fuzzing of ``patch_match`` (hypothesis, profile "dzsr" from conftest): random shapes
(empty batches, 1-pixel maps with p = 1, maps exactly the patch size), dtypes, layouts, value regimes
(normal, huge, tiny, mixed magnitudes, zero pixels, exact ties) with NaN/±Inf injected anywhere, on
every backend (reference, cpp, Triton under the interpreter in both precisions, the CUDA kernel
through the emulation), checked against the independent float64 brute force (NaN masks and NaN
indices included) and against the reference backend; invalid draws must give one clear error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from patch_match_oracle import LAYOUTS, check_match, emulated_cuda_kernel, run

from dzsr_kernels._backend import unavailable_reason
from dzsr_kernels.patch_match import reference
from dzsr_kernels.patch_match.precision import fast_score_error_bound

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Magnitudes of the "huge" and "tiny" regimes per dtype: huge overflows a naive squared norm, tiny
# makes the norm fall below F.normalize's 1e-12 floor, both staying exact in float32 after normalising.
HUGE = {torch.float16: 3e3, torch.bfloat16: 1e36, torch.float32: 1e36, torch.float64: 1e300}
TINY = {torch.float16: 1e-6, torch.bfloat16: 1e-25, torch.float32: 1e-25, torch.float64: 1e-20}
REGIMES = ["normal", "huge", "tiny", "mixed", "zeros", "ties"]
SPECIALS = [float("nan"), float("inf"), float("-inf")]
FUZZ_LAYOUTS = [name for name in LAYOUTS if name != "empty_batch"]  # the batch size is drawn
TRITON_OK = unavailable_reason("triton", "cpu") is None
# The Triton interpreter and the CUDA emulation are slower: a third of the profile's examples.
FEW = settings(max_examples=max(4, settings().max_examples // 3))


def _values(regime, n, c, h, w, dtype, gen):
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    if regime == "huge":
        x = x * HUGE[dtype]
    elif regime == "tiny":
        x = x * TINY[dtype]
    elif regime == "mixed":  # per-pixel magnitudes spanning the whole tiny..huge range
        lo, hi = torch.tensor([TINY[dtype], HUGE[dtype]], dtype=torch.float64).log10().tolist()
        x = x * 10 ** (lo + (hi - lo) * torch.rand(n, 1, h, w, generator=gen, dtype=torch.float64))
    elif regime == "zeros":
        x = x * (torch.rand(n, 1, h, w, generator=gen) < 0.6)
    elif regime == "ties":  # one-hot pixels, some zero: exact, equal scores
        k = torch.randint(0, c, (n, h, w), generator=gen)
        x = F.one_hot(k, c).permute(0, 3, 1, 2) * (torch.rand(n, 1, h, w, generator=gen) < 0.8)
    return x.to(dtype)


@st.composite
def valid_inputs(draw, patch_sizes=(1, 3, 5)):
    """(query, ref, p): shapes up to 2 x 4 x (p+3) x (p+3), any dtype/layout/regime, up to 3 specials."""
    p = draw(st.sampled_from(patch_sizes))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 4))
    hq, wq, hr, wr = (draw(st.integers(p, p + 3)) for _ in range(4))
    dtype, layout = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(FUZZ_LAYOUTS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    maps = [
        _values(draw(st.sampled_from(REGIMES)), n, c, h, w, dtype, gen)
        for h, w in ((hq, wq), (hr, wr))
    ]
    for _ in range(draw(st.integers(0, 3)) if n else 0):
        x = maps[draw(st.integers(0, 1))]
        at = tuple(draw(st.integers(0, s - 1)) for s in x.shape)
        x[at] = draw(st.sampled_from(SPECIALS))
    return LAYOUTS[layout](maps[0]), LAYOUTS[layout](maps[1]), p


def check_against_reference(score, index, query, ref, p):
    """Equal NaN masks and NaN indices, finite scores within float32 accuracy of the reference backend."""
    s_ref, i_ref = run("reference", query, ref, p)
    nan = s_ref.isnan()
    assert torch.equal(score.isnan(), nan) and torch.equal(index[nan], i_ref[nan])
    torch.testing.assert_close(score, s_ref, atol=2e-5, rtol=0, equal_nan=True)


@given(valid_inputs(), st.sampled_from(["reference", "cpp"]))
def test_fuzz_cpu_backends(case, backend):
    query, ref, p = case
    score, index = run(backend, query, ref, p)
    check_match(score, index, query, ref, p)
    check_against_reference(score, index, query, ref, p)


@pytest.mark.skipif(
    not TRITON_OK, reason="Triton cannot run here (needs TRITON_INTERPRET=1, set by conftest)"
)
@FEW
@given(valid_inputs(), st.sampled_from(["exact", "fast"]))
def test_fuzz_triton_interpreter(case, precision):
    query, ref, p = case
    score, index = run("triton", query, ref, p, precision=precision)
    if precision == "fast":  # scores within the proven bound, indices within twice it
        check_match(score, index, query, ref, p, tol=2 * fast_score_error_bound(query.shape[1], p))
    else:
        check_match(score, index, query, ref, p)
        check_against_reference(score, index, query, ref, p)


@pytest.mark.slow
@FEW
@given(valid_inputs(patch_sizes=(1, 3, 5, 7)))
def test_fuzz_emulated_cuda(case):
    """The CUDA kernel (patch sizes up to its limit of 7) inside match_prepared, as the cpp backend runs it."""
    query, ref, p = case
    kernel = emulated_cuda_kernel()
    score, index = reference.match_prepared(
        *reference.prepare(query, ref, p, torch.float32), p, kernel
    )
    check_match(score, index, query, ref, p)
    check_against_reference(score, index, query, ref, p)


def _invalid(kind, p, x):
    """A call that breaks one rule of the API, from a valid (N,C,H,W) map ``x``: (query, ref, p, error, match)."""
    n, c, h, w = x.shape
    if kind == "small_query":
        return x[:, :, : p - 1], x, p, ValueError, "query must be at least patch_size"
    if kind == "small_ref":
        return x, x[:, :, :, : p - 1], p, ValueError, "ref must be at least patch_size"
    if kind == "no_channels":
        return x[:, :0], x[:, :0], p, ValueError, "C >= 1"
    if kind == "mixed_dtypes":
        return x, x.double(), p, TypeError, "query and ref must share one dtype"
    if kind == "channel_mismatch":
        return x, torch.cat([x, x], 1), p, ValueError, r"ref must match query in \(N, C\)"
    if kind == "even_patch":
        return x, x, p + 1, ValueError, "patch_size must be a positive odd int"
    if kind == "three_dims":
        return x[0], x, p, ValueError, "query must have shape"
    return x, x.long(), p, TypeError, "ref must be a floating"  # integer ref


@given(
    st.sampled_from(
        [
            "small_query",
            "small_ref",
            "no_channels",
            "mixed_dtypes",
            "channel_mismatch",
            "even_patch",
            "three_dims",
            "integer_ref",
        ]
    ),
    st.sampled_from([1, 3, 5]),
    st.integers(1, 2),
    st.integers(1, 3),
    st.sampled_from(["reference", "cpp"]),
)
def test_fuzz_invalid_inputs_give_one_clear_error(kind, p, n, c, backend):
    query, ref, patch_size, error, message = _invalid(kind, p, torch.randn(n, c, p + 1, p + 1))
    with pytest.raises(error, match=message):
        run(backend, query, ref, patch_size)
