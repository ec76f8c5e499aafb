"""Patch matching (docs/design.md#patch-match): reference vs an independent brute force, the cpp backend vs both,
conventions (zero pixels, ties, dtypes, layouts), non-finite/extreme/empty inputs, validation, the
fake (sizes, strides, dtypes), opcheck, torch.compile, and the flow/offset helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from patch_match_oracle import (
    LAYOUTS,
    NON_FINITE_CASES,
    assert_fake_equals_real,
    check_compile_fullgraph,
    check_match,
    first_max_index,
    layout_inputs,
    non_finite_case,
    one_hot_map,
    run,
)

import dzsr_kernels
from dzsr_kernels.patch_match import flow_to_offsets, match_flow, patch_match
from dzsr_kernels.patch_match.precision import fast_score_error_bound

BACKENDS = ["reference", "cpp"]
SHAPES = [  # N, C, Hq, Wq, Hr, Wr
    (1, 4, 3, 3, 3, 3),
    (2, 5, 6, 7, 8, 5),
    (1, 16, 9, 13, 11, 10),
    (3, 3, 5, 4, 4, 6),
    (1, 8, 40, 37, 35, 70),  # several C++ query tiles and reference rows
    (1, 4, 6, 7, 5, 1100),  # reference wider than one C++ band (512 pixels): three column chunks
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_bruteforce(backend, shape):
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq), torch.randn(n, c, hr, wr)
    check_match(*run(backend, query, ref), query, ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_without_onednn_matches_bruteforce(shape):
    """The C++ kernel computes its similarity tiles through oneDNN where PyTorch has it enabled
    (the test above) and through at::mm where it is switched off (torch.backends.mkldnn)."""
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq), torch.randn(n, c, hr, wr)
    with torch.backends.mkldnn.flags(enabled=False):
        check_match(*run("cpp", query, ref), query, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1, 5])
def test_other_patch_sizes(backend, p):
    query, ref = (
        torch.randn(2, 6, 9, 8, dtype=torch.float64),
        torch.randn(2, 6, 7, 10, dtype=torch.float64),
    )
    check_match(*run(backend, query, ref, p), query, ref, p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_known_shift(backend):
    """ref is a larger crop of the same image: query patch (y, x) is ref patch (y+a, x+b) with score 1."""
    image = torch.randn(2, 8, 31, 36)
    a, b = 5, 11
    query, ref = image[:, :, a : a + 17, b : b + 20], image
    score, index = run(backend, query, ref)
    ys, xs = torch.meshgrid(torch.arange(15), torch.arange(18), indexing="ij")
    expected = ((ys + a) * (36 - 2) + xs + b).expand(2, -1, -1)
    assert torch.equal(index, expected)
    torch.testing.assert_close(score, torch.ones_like(score), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_smallest_index(backend):
    """One-hot pixels with 3 channels: many exactly equal scores; the smallest index must win."""
    query, ref = one_hot_map(2, 3, 9, 12), one_hot_map(2, 3, 40, 45)
    _, index = run(backend, query, ref)
    assert torch.equal(index.reshape(2, -1), first_max_index(query, ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_reference_ties_to_zero(backend):
    query = torch.randn(1, 5, 6, 9)
    ref = torch.randn(1, 5, 1, 1).expand(1, 5, 33, 34)  # every reference patch identical
    score, index = run(backend, query, ref)
    assert (index == 0).all()
    check_match(score, index, query, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_pixels(backend):
    """All-zero pixels normalise to zero vectors: patch norms shrink, all-zero patches score 0 against
    everything and so match index 0; no NaN anywhere."""
    query, ref = torch.randn(2, 6, 10, 11), torch.randn(2, 6, 12, 9)
    query[:, :, 2:5, 3:6] = 0  # query patch (2, 3) is all zero
    query[0, :, 7, :] = 0
    ref[:, :, :, 4] = 0
    score, index = run(backend, query, ref)
    assert not torch.isnan(score).any()
    assert score[:, 2, 3].eq(0).all() and index[:, 2, 3].eq(0).all()
    check_match(score, index, query, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_reference(backend):
    query, ref = torch.randn(1, 4, 5, 6), torch.zeros(1, 4, 7, 7)
    score, index = run(backend, query, ref)
    assert score.eq(0).all() and index.eq(0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    base_q, base_r = torch.randn(2, 14, 9, 20), torch.randn(2, 7, 12, 11)
    query = base_q[:, ::2, :, ::2]  # strided channels and columns
    ref = base_r.contiguous(memory_format=torch.channels_last)
    assert not query.is_contiguous() and not ref.is_contiguous()
    score, index = run(backend, query, ref)
    score_c, index_c = run(backend, query.contiguous(), ref.contiguous())
    assert torch.equal(index, index_c)
    torch.testing.assert_close(score, score_c, atol=1e-6, rtol=0)
    check_match(score, index, query, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    query, ref = torch.randn(2, 8, 7, 9).to(dtype), torch.randn(2, 8, 10, 6).to(dtype)
    score, index = run(backend, query, ref)
    check_match(score, index, query, ref)  # brute force on the same (rounded) values


def test_cpp_agrees_with_reference_on_larger_maps():
    query, ref = torch.randn(1, 32, 45, 66), torch.randn(1, 32, 70, 41)
    s_ref, i_ref = run("reference", query, ref)
    s_cpp, i_cpp = run("cpp", query, ref)
    torch.testing.assert_close(s_cpp, s_ref, atol=2e-6, rtol=0)
    assert (i_cpp == i_ref).float().mean() > 0.999


def test_cpp_same_result_for_any_thread_count():
    """The work split changes with the thread count (here 4 bands of reference rows on one thread,
    8 on two); the merged result must not."""
    query, ref = torch.randn(2, 8, 33, 35), torch.randn(2, 8, 130, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run("cpp", query, ref)
    finally:
        torch.set_num_threads(threads)
    score, index = run("cpp", query, ref)
    assert torch.equal(index, single[1]) and torch.equal(score, single[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_do_not_require_grad(backend):
    query, ref = (
        torch.randn(1, 3, 5, 5, requires_grad=True),
        torch.randn(1, 3, 5, 5, requires_grad=True),
    )
    score, index = run(backend, query, ref)
    assert not score.requires_grad and not index.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_non_finite_extreme_and_empty_inputs(backend, dtype, case):
    """NaN exactly in the rows the brute force has a NaN in, the first NaN's index there, the brute force
    elsewhere (huge and tiny values normalised without overflow), empty outputs for N = 0."""
    query, ref = non_finite_case(case, dtype=dtype)
    score, index = run(backend, query, ref)
    check_match(score, index, query, ref)


@pytest.mark.parametrize(
    "case", ["nan_in_query", "neg_inf_in_ref", "nan_in_both", "huge_tiny_zero_mix"]
)
def test_cpp_equals_reference_on_non_finite_inputs(case):
    """The issue's report: cpp hid NaNs, returned index 2^63-1 for a NaN query and other indices than the
    reference for a NaN reference. Now equal NaN masks and indices there, close finite values."""
    query, ref = non_finite_case(case, c=6, hq=9, wq=10, hr=8, wr=11)
    (s_ref, i_ref), (s_cpp, i_cpp) = run("reference", query, ref), run("cpp", query, ref)
    assert torch.equal(s_cpp.isnan(), s_ref.isnan()) and torch.equal(
        i_cpp[s_ref.isnan()], i_ref[s_ref.isnan()]
    )
    torch.testing.assert_close(s_cpp, s_ref, atol=2e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_float64_inputs_do_not_overflow(backend):
    """float64 values whose float32 cast is Inf and whose squares overflow float64: the cpp backend
    (float32) normalises in float64 before the cast, so it agrees with the float64 reference."""
    query, ref = (
        torch.randn(1, 4, 6, 6, dtype=torch.float64) * 1e300,
        torch.randn(1, 4, 5, 7, dtype=torch.float64),
    )
    ref[:, :, :, :3] *= 1e307
    score, index = run(backend, query, ref)
    assert not score.isnan().any()
    check_match(score, index, query, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_of_any_layout(backend):
    query = torch.randn(0, 6, 9, 8).contiguous(memory_format=torch.channels_last)
    score, index = run(backend, query[:, ::2], torch.randn(0, 3, 5, 5))
    assert (
        score.shape == index.shape == (0, 7, 6)
        and score.dtype == torch.float32
        and index.dtype == torch.int64
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_equals_cpp_outputs(layout):
    assert_fake_equals_real((*layout_inputs(layout), 3, "exact", "cpp"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_cpp(layout):
    args = (*layout_inputs(layout, nan=False), 3, "exact", "cpp")
    torch.library.opcheck(torch.ops.dzsr.patch_match.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    check_compile_fullgraph(backend)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("precision", ["fast", "tf32"])
def test_fast_needs_triton(backend, precision):
    with pytest.raises(ValueError, match="precision='fast' needs the triton backend"):
        run(backend, torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5), precision=precision)


def test_exact_alias_float32():
    query, ref = torch.randn(1, 4, 6, 7), torch.randn(1, 4, 7, 5)
    a, b = run("cpp", query, ref, precision="float32"), run("cpp", query, ref, precision="exact")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _x(*shape, **kw):
    return torch.randn(*shape, **kw)


BAD_INPUTS = [  # (query, ref, kwargs, error, message)
    (_x(1, 3, 5, 5), _x(1, 4, 5, 5), {}, ValueError, r"ref must match query in \(N, C\)"),
    (_x(2, 3, 5, 5), _x(1, 3, 5, 5), {}, ValueError, r"ref must match query in \(N, C\)"),
    (_x(1, 3, 2, 5), _x(1, 3, 5, 5), {}, ValueError, "query must be at least patch_size"),
    (_x(1, 3, 5, 0), _x(1, 3, 5, 5), {}, ValueError, "query must be at least patch_size"),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 4), {"patch_size": 5}, ValueError, "ref must be at least"),
    (_x(1, 3, 5, 5), _x(1, 3, 0, 5), {}, ValueError, "ref must be at least"),
    (_x(1, 0, 5, 5), _x(1, 0, 5, 5), {}, ValueError, "C >= 1"),
    (_x(3, 5, 5), _x(1, 3, 5, 5), {}, ValueError, r"query must have shape \(N, C, Hq, Wq\)"),
    (_x(1, 3, 5, 5), _x(1, 1, 3, 5, 5), {}, ValueError, r"ref must have shape \(N, C, Hr, Wr\)"),
    (
        _x(1, 3, 5, 5),
        torch.ones(1, 3, 5, 5, dtype=torch.int64),
        {},
        TypeError,
        "ref must be a floating",
    ),
    (
        torch.ones(1, 3, 5, 5, dtype=torch.bool),
        _x(1, 3, 5, 5),
        {},
        TypeError,
        "query must be a floating",
    ),
    (
        _x(1, 3, 5, 5, dtype=torch.complex64),
        _x(1, 3, 5, 5),
        {},
        TypeError,
        "query must be a floating",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5, dtype=torch.float64),
        {},
        TypeError,
        "query and ref must share one dtype",
    ),
    (
        _x(1, 3, 5, 5).half(),
        _x(1, 3, 5, 5).bfloat16(),
        {},
        TypeError,
        "query and ref must share one dtype",
    ),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 5, device="meta"), {}, ValueError, "one device"),
    (_x(1, 3, 5, 5).to_sparse(), _x(1, 3, 5, 5), {}, TypeError, "query must be a dense"),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": 2},
        ValueError,
        "patch_size must be a positive odd int",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": 0},
        ValueError,
        "patch_size must be a positive odd int",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": -3},
        ValueError,
        "patch_size must be a positive odd int",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": True},
        TypeError,
        "patch_size must be an int, got bool",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": 3.0},
        TypeError,
        "patch_size must be an int, got float",
    ),
    (
        _x(1, 3, 5, 5),
        _x(1, 3, 5, 5),
        {"patch_size": "3"},
        TypeError,
        "patch_size must be an int, got str",
    ),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 5), {"patch_size": None}, TypeError, "patch_size must be an int"),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 5), {"precision": "fp16"}, ValueError, "precision must be one of"),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 5), {"precision": "TF32"}, ValueError, "precision must be one of"),
    (_x(1, 3, 5, 5), _x(1, 3, 5, 5), {"precision": None}, TypeError, "precision must be a str"),
    ([[1.0]], _x(1, 3, 5, 5), {}, TypeError, "query must be a torch.Tensor"),
    (_x(1, 3, 5, 5).numpy(), _x(1, 3, 5, 5), {}, TypeError, "query must be a torch.Tensor"),
    (_x(1, 3, 5, 5), None, {}, TypeError, "ref must be a torch.Tensor"),
]


@pytest.mark.parametrize("query, ref, kwargs, error, message", BAD_INPUTS)
def test_bad_inputs(query, ref, kwargs, error, message):
    with pytest.raises(error, match=message):
        patch_match(query, ref, **kwargs)


# ---- flow and offsets --------------------------------------------------------------------------


def test_match_flow_values_and_padding():
    index = torch.tensor(
        [[[0, 5], [7, 2]]]
    )  # query patch grid 2x2 (query 4x4); ref 5x6 -> grid 3x4
    flow = match_flow(index, (5, 6))
    assert flow.shape == (1, 2, 4, 4) and flow.dtype == torch.float32
    # index 5 = (1, 1): from query patch (0, 1) -> (dy, dx) = (1, 0); index 7 = (1, 3) from (1, 0) -> (0, 3)
    expected_dy = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    expected_dx = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    assert torch.equal(flow[0, 0, :2, :2], expected_dy) and torch.equal(
        flow[0, 1, :2, :2], expected_dx
    )
    assert flow[:, :, 2:].eq(0).all() and flow[:, :, :, 2:].eq(0).all()


def test_match_flow_of_known_shift():
    image = torch.randn(1, 6, 30, 30)
    query, ref = image[:, :, 4:20, 3:25], image
    _, index = patch_match(query, ref)
    flow = match_flow(index, ref.shape[2:])
    assert flow[:, 0, :14, :20].eq(4).all() and flow[:, 1, :14, :20].eq(3).all()


def test_flow_to_offsets_matches_loop_construction():
    """Tap t = 3i + j at pixel (y, x) carries the flow of pixel (y-i, x-j) (zero outside), as (dy, dx)."""
    flow = torch.randn(2, 2, 5, 7)
    offset = flow_to_offsets(flow, scale=1)
    assert offset.shape == (2, 18, 5, 7)
    expected = torch.zeros(2, 18, 5, 7)
    for i in range(3):
        for j in range(3):
            t = 3 * i + j
            for y in range(i, 5):
                for x in range(j, 7):
                    expected[:, 2 * t, y, x] = flow[:, 0, y - i, x - j]
                    expected[:, 2 * t + 1, y, x] = flow[:, 1, y - i, x - j]
    assert torch.equal(offset, expected)


def test_flow_to_offsets_upsampling():
    """scale=4: align-corners bilinear upsampling times 4; a constant field becomes 4x that constant."""
    flow = torch.full((1, 2, 6, 8), 2.0)
    flow[:, 1] = -1.0
    offset = flow_to_offsets(flow, scale=4)
    assert offset.shape == (1, 18, 24, 32)
    interior = offset[
        :, :, 10:, 10:
    ]  # upsampled rows/columns >= 10 interpolate only grid rows/columns >= 2
    assert torch.allclose(interior[:, 0::2], torch.tensor(8.0))
    assert torch.allclose(interior[:, 1::2], torch.tensor(-4.0))
    grid = flow_to_offsets(flow, scale=1)
    assert torch.equal(
        offset[:, :, ::23, ::31], 4 * grid[:, :, ::5, ::7]
    )  # align_corners keeps the corners


def test_offsets_warp_reference_onto_query():
    """A depthwise deform conv of ref with the matching offsets equals the conv of the query wherever
    all nine patches a pixel's taps use have their true match inside ref (the C2-Matching construction)."""
    c, h, w, a, b = 4, 20, 24, 3, 5
    image = torch.randn(1, c, h + a, w + b)
    query, ref = image[:, :, a:, b:], image[:, :, :h, :w]  # query(y, x) = ref(y + a, x + b)
    _, index = patch_match(query, ref)
    offset = flow_to_offsets(match_flow(index, ref.shape[2:]), scale=1)
    weight = torch.randn(c, 1, 3, 3)
    with dzsr_kernels.use_backend("reference"):
        warped = dzsr_kernels.deform_conv2d(ref, offset, weight, groups=c)
    expected = F.conv2d(query, weight, padding=1, groups=c)
    region = (slice(None), slice(None), slice(2, h - 2 - a), slice(2, w - 2 - b))
    torch.testing.assert_close(warped[region], expected[region], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: match_flow(torch.zeros(1, 2, 2), (4, 4)), TypeError, "index must be an int64"),
        (
            lambda: match_flow(torch.zeros(2, 2, dtype=torch.int64), (4, 4)),
            TypeError,
            "index must be an int64",
        ),
        (
            lambda: match_flow(torch.full((1, 2, 2), 4), (4, 4)),
            ValueError,
            r"index values must lie in \[0, 4\)",
        ),
        (
            lambda: match_flow(torch.zeros(1, 2, 2, dtype=torch.int64), (2, 4)),
            ValueError,
            "ref_size",
        ),
        (
            lambda: flow_to_offsets(torch.zeros(1, 3, 4, 4)),
            ValueError,
            r"flow must have shape \(N, 2, H, W\)",
        ),
        (
            lambda: flow_to_offsets(torch.zeros(1, 2, 4, 4), scale=0),
            ValueError,
            "scale must be a positive int",
        ),
    ],
)
def test_flow_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---- CUDA (runs wherever a GPU exists) ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 50, 47, 66, 71)])
def test_cuda_matches_bruteforce(backend, shape):
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq, device="cuda"), torch.randn(n, c, hr, wr, device="cuda")
    score, index = run(backend, query, ref)
    assert score.device.type == "cuda" and index.device.type == "cuda"
    check_match(score, index, query, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_cuda_ties_and_zero_pixels(backend):
    query, ref = one_hot_map(2, 3, 9, 12).cuda(), one_hot_map(2, 3, 40, 45).cuda()
    _, index = run(backend, query, ref)
    assert torch.equal(index.reshape(2, -1).cpu(), first_max_index(query.cpu(), ref.cpu()))
    query[:, :, 2:5, 3:6] = 0
    score, index = run(backend, query, torch.randn(2, 3, 40, 45, device="cuda"))
    assert score[:, 2, 3].eq(0).all() and index[:, 2, 3].eq(0).all() and not score.isnan().any()


@pytest.mark.gpu
def test_cuda_opcheck_cpp():
    query, ref = torch.randn(2, 5, 6, 8, device="cuda"), torch.randn(2, 5, 7, 5, device="cuda")
    torch.library.opcheck(torch.ops.dzsr.patch_match.default, (query, ref, 3, "exact", "cpp"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_cuda_non_finite_extreme_and_empty(backend, case):
    query, ref = non_finite_case(case, device="cuda")
    check_match(*run(backend, query, ref), query, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_fake_equals_outputs(backend, layout):
    assert_fake_equals_real((*layout_inputs(layout, "cuda"), 3, "exact", backend))


def _fast_tol(c: int, p: int = 3) -> float:
    """check_match's tolerance for precision='fast' (twice the proven score bound: see there)."""
    return 2 * fast_score_error_bound(c, p)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 50, 47, 66, 71), (1, 256, 40, 36, 33, 45)])
def test_cuda_fast_within_its_bound(shape):
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq, device="cuda"), torch.randn(n, c, hr, wr, device="cuda")
    score, index = run("triton", query, ref, precision="fast")
    check_match(score, index, query, ref, tol=_fast_tol(c))
    exact, _ = run("triton", query, ref)
    assert (score - exact).abs().max().item() <= fast_score_error_bound(c, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_cuda_fast_non_finite_extreme_and_empty(case):
    query, ref = non_finite_case(case, device="cuda")
    check_match(*run("triton", query, ref, precision="fast"), query, ref, tol=_fast_tol(5))
