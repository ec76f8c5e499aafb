"""Test configuration: Triton runs under its interpreter on CPU when there is no GPU, and every
kernel output is poisoned (NaN / -1) before it is written, so unwritten elements fail the tests."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DZSR_POISON", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property-based fuzz tests (tests/test_fuzz_*.py): a bounded number of examples, no per-example
# deadline (the first example of a backend may JIT-build or compile), random by default like the
# rest of the suite. DZSR_FUZZ_EXAMPLES raises the count for a longer local run.
settings.register_profile(
    "dzsr",
    max_examples=int(os.environ.get("DZSR_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile("dzsr")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A fresh, reported seed per test: failures print it, reruns can pin it with DZSR_SEED."""
    seed = int(os.environ.get("DZSR_SEED", torch.seed() % 2**31))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.fixture
def bf16_on_any_cpu(monkeypatch):
    """``precision="bf16"`` accepted on this CPU even without bfloat16 arithmetic: where
    ``dzsr.infer.native_bfloat16`` is False PyTorch emulates it (much slower, the same bfloat16
    values stored), so the bf16 numerics are tested on every machine."""
    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: True)


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        for key, value in item.user_properties:
            if key == "seed":
                call.excinfo.value.args = (*call.excinfo.value.args, f"[DZSR_SEED={value}]")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; runs wherever one exists")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_runtest_logreport(report):
    """With DZSR_FAILURE_LOG set, append each failure's report to that file as it happens (under
    xdist too: the controller sees every report), so a run cut short by a time limit, such as a GPU
    lease (benchmarks/gpu_session.sh), still leaves its failures' tracebacks."""
    path = os.environ.get("DZSR_FAILURE_LOG")
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext}\n")
