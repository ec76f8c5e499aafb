"""The checkout itself: no unresolved merge left in a tracked file, shell scripts that parse."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def tracked_files():
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / name for name in out.splitlines()]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_no_merge_conflict_markers_in_tracked_text_files():
    found = []
    for path in tracked_files():
        if path.is_file() and path.suffix not in {".png", ".pth", ".pt", ".safetensors", ".jpg"}:
            text = path.read_bytes().decode("utf-8", errors="replace")
            found += [
                f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
                for m in MARKER.finditer(text)
            ]
    assert not found, found


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.sh")))
def test_benchmark_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
