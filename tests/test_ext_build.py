"""The JIT build cache of the C++ kernels: one folder per source/flag hash, and locks that never hang."""

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dzsr_kernels import _ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def csrc_copy(tmp_path):
    copy = tmp_path / "csrc"
    shutil.copytree(_ext.CSRC_DIR, copy)
    return copy


def test_key_depends_on_source_bytes_not_location(csrc_copy):
    key = _ext.build_key(False, csrc_copy)
    assert key == _ext.build_key(
        False, _ext.CSRC_DIR
    )  # same sources elsewhere: same binary, same folder
    header = next(csrc_copy.rglob("*.h"))
    header.write_text(header.read_text() + "\n// edited\n")
    assert _ext.build_key(False, csrc_copy) != key


def test_key_depends_on_new_files_flags_and_cuda(csrc_copy, monkeypatch):
    key = _ext.build_key(False, csrc_copy)
    (csrc_copy / "extra.h").write_text("")
    assert _ext.build_key(False, csrc_copy) != key
    (csrc_copy / "extra.h").unlink()
    assert _ext.build_key(False, csrc_copy) == key
    assert _ext.build_key(True, csrc_copy) != key
    monkeypatch.setattr(_ext, "EXTRA_CFLAGS", _ext.EXTRA_CFLAGS + ["-DSOMETHING"])
    assert _ext.build_key(False, csrc_copy) != key


def test_key_depends_on_the_cpu_instruction_set(csrc_copy, monkeypatch):
    """-march=native: a build for an AVX-512 CPU must not be loaded on an AVX2-only one."""
    flags = _ext.native_cpu()
    assert flags and flags == _ext.native_cpu()
    if Path("/proc/cpuinfo").is_file() and "x86" in platform.machine():
        assert "sse2" in flags.split()
    key = _ext.build_key(False, csrc_copy)
    monkeypatch.setattr(_ext, "native_cpu", lambda: "fpu sse sse2")  # another CPU
    assert _ext.build_key(False, csrc_copy) != key


@pytest.fixture
def existence_lock(monkeypatch):
    """Behave as with a torch whose JIT lock file blocks by its mere existence (before 2.14)."""
    monkeypatch.setattr(_ext, "_torch_lock_blocks_by_existence", lambda: True)


def test_stale_torch_lock_is_removed_with_a_message(tmp_path, capsys, existence_lock):
    (tmp_path / "lock").write_text("")
    with _ext.build_lock(str(tmp_path), wait_s=1):
        assert not (tmp_path / "lock").exists()
    assert "left by a killed build" in capsys.readouterr().err


def test_os_locked_torch_lock_file_is_left_alone_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_ext, "_torch_lock_blocks_by_existence", lambda: False)
    (tmp_path / "lock").write_text("")
    with _ext.build_lock(str(tmp_path), wait_s=1):
        assert (tmp_path / "lock").exists()
    assert capsys.readouterr().err == ""


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = (
        "import fcntl, sys, time\n"
        f"h = open({str(folder / 'dzsr-build.lock')!r}, 'a+'); fcntl.flock(h, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_builder_makes_us_wait_then_time_out_clearly(tmp_path, capsys):
    holder = _hold_lock(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="another process has been building"):
            with _ext.build_lock(str(tmp_path), wait_s=0.5):
                pass
        assert time.monotonic() - start < 10
        assert "waiting for another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_builder_is_free_at_once(tmp_path, existence_lock):
    holder = _hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    (tmp_path / "lock").write_text("")  # what the killed build's torch builder left behind
    start = time.monotonic()
    with _ext.build_lock(str(tmp_path), wait_s=5):
        pass
    assert time.monotonic() - start < 2
    assert not (tmp_path / "lock").exists()


def test_build_after_a_killed_build_does_not_hang(tmp_path):
    """A leftover torch lock file in the very folder a build will use: the build proceeds (here to a
    compiler failure, CXX=/bin/false, to stay fast) instead of waiting forever, with this torch's own
    lock and with an existence-blocking one (the running torch's own kind before 2.14)."""
    code = (
        "from dzsr_kernels import _ext\n"
        "import sys\n"
        "if sys.argv[1] == 'old':\n"
        "    _ext._torch_lock_blocks_by_existence = lambda: True\n"
        "import os\n"
        "d = os.path.join(os.environ['DZSR_CACHE_DIR'], _ext.build_key(False))\n"
        "os.makedirs(d); open(os.path.join(d, 'lock'), 'w').close()\n"
        "print(_ext.unavailable_reason('cpu'))\n"
    )
    env = {
        **os.environ,
        "DZSR_CACHE_DIR": str(tmp_path),
        "CXX": "/bin/false",
        "MAX_JOBS": "1",
        "PYTHONPATH": str(ROOT),
    }
    for torch_lock in ("new", "old"):
        cache = tmp_path / torch_lock
        env["DZSR_CACHE_DIR"] = str(cache)
        out = subprocess.run(
            [sys.executable, "-c", code, torch_lock],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "compiler log:" in out.stdout
        assert f"for torch {torch.__version__} (CPU) failed" in out.stdout
        removed = torch_lock == "old" or _ext._torch_lock_blocks_by_existence()  # torch < 2.14
        assert ("left by a killed build" in out.stderr) == removed


def test_a_prebuilt_library_that_fails_to_load_names_both_torch_versions(tmp_path, monkeypatch):
    (tmp_path / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a shared library")
    (tmp_path / _ext.VERSION_RECORD).write_text("2.0.0\n")
    monkeypatch.setattr(_ext, "PACKAGE_DIR", tmp_path)
    reason = _ext._load()
    assert f"(built against torch 2.0.0) failed to load into torch {torch.__version__}" in reason
