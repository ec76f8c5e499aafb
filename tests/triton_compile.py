"""Compile Triton kernels for a GPU target on a machine without one (tests' shared helper)."""

import os
import subprocess
import sys
from pathlib import Path


def compile_for_gpu(script: str, arch: str = "90") -> None:
    """Run ``script`` (it compiles kernels for sm_``arch`` and prints "ok" last) in a child process
    without TRITON_INTERPRET, so the real compiler's rules apply; needs no GPU."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-c", script, arch],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
