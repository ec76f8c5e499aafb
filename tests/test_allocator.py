"""The allocator setup (dzsr.allocator): when it applies, and that it bounds page faults of a tiled run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dzsr import allocator
from dzsr.cli import EXIT_ERROR

ROOT = Path(__file__).resolve().parents[1]

# A tiled whole-image run in a fresh process: two warm-up passes, then the minor page faults of a
# second identical pass (the pools are warm, so with the setup reused buffers need no new pages).
_CHILD = """
import json, resource, sys
from dzsr import allocator
state = allocator.configure()
import torch
import dzsr_kernels
from dzsr.infer import split_tiles, super_resolve
from dzsr.models import SelfDZSR
torch.set_num_threads(1)
torch.manual_seed(0)
model = SelfDZSR(4).eval()
h, w, tile = 72, 88, 24
lr, ref, paste_ref = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
box = torch.tensor([[27, 45, 33, 55]])  # the central 1/4 box, as dzsr sr pastes
with dzsr_kernels.use_backend("reference"):
    for _ in range(2):
        super_resolve(model, lr, ref, paste_ref, box, tile=tile)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    super_resolve(model, lr, ref, paste_ref, box, tile=tile)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"state": state, "faults": faults, "tiles": len(split_tiles(h, w, tile))}))
"""


def _clean_env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_")
        and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", allocator.VARIABLE)
    }
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _run_child(**extra) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=ROOT,
        env=_clean_env(**extra),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tiled_run_page_faults_stay_bounded():
    """With the setup, a warm pass faults in far fewer pages per tile than under the system
    allocator, which maps and unmaps every large buffer per tile and stage (measured here: about
    300 vs 3900 faults per tile on glibc 2.36; the bound asks for 5x)."""
    ours, system = _run_child(), _run_child(DZSR_ALLOCATOR="system")
    assert ours["state"] == allocator.DESCRIPTION and system["state"].startswith("system")
    assert ours["tiles"] == system["tiles"] == 12
    per_tile, per_tile_system = ours["faults"] / ours["tiles"], system["faults"] / system["tiles"]
    assert per_tile * 5 < per_tile_system, (ours, system)


@pytest.mark.parametrize(
    "env,why",
    [
        ({"DZSR_ALLOCATOR": "system"}, "DZSR_ALLOCATOR=system"),
        ({"MALLOC_TOP_PAD_": "1"}, "MALLOC_TOP_PAD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
    ],
)
def test_setup_is_skipped_when_the_user_chose(env, why):
    assert allocator._reason_to_skip(env) is not None and why in allocator._reason_to_skip(env)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"DZSR_ALLOCATOR": "auto"},
        {"DZSR_ALLOCATOR": ""},
        {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"},
    ],
)
def test_setup_applies_by_default_on_glibc(env):
    assert allocator._reason_to_skip(env) is None


def test_bad_variable_is_one_cli_error():
    out = subprocess.run(
        [sys.executable, "-m", "dzsr.cli", "info"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_clean_env(DZSR_ALLOCATOR="jemalloc"),
        timeout=300,
    )
    assert out.returncode == EXIT_ERROR
    assert (
        out.stderr.strip()
        == "dzsr info: error: environment variable DZSR_ALLOCATOR must be auto or system, "
        "got 'jemalloc'"
    )


def test_info_states_the_allocator():
    out = subprocess.run(
        [sys.executable, "-m", "dzsr.cli", "info"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"allocator: {allocator.DESCRIPTION}" in out.stdout
