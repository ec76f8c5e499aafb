"""User-visible output files: checked before any work, written atomically, errors that name the file.

Semantics (every image, CSV, checkpoint and export dzsr writes goes through ``atomic_write``):

* ``check_output(path, what, extensions, inputs)`` runs before any computation and refuses, with one
  ``OutputError`` naming the argument ``what``: an empty path; a path with no or an unknown extension
  (when ``extensions`` is given; compared case-insensitively); an existing folder; a path that is
  the same file as one of ``inputs`` (``os.path.samefile``: symlinks and hard links included, so
  ``--out`` can never replace a photo it reads); a folder that cannot hold it (``check_folder``).
* ``check_folder(folder, what)``: the folder, or the nearest existing folder above it (missing
  folders are created only when writing), must be a folder, not a file, and must accept a new file.
  Writability is tested by creating and removing a temporary file there, not with ``os.access``
  (which says yes to root even on read-only folders).
* ``atomic_write(path, write)`` calls ``write(f)`` on a temporary file ``.NAME.XXXXXXXX.tmp`` in the
  destination folder, flushes and fsyncs it, and renames it over ``path`` (``os.replace``) only after
  ``write`` returned: a reader sees the old file or the whole new one, never a part, and an existing
  file survives any failure (full disk, read-only folder, an exception or Ctrl-C inside ``write``).
  The temporary file is removed on every failure. A new file gets the usual ``0o666 & ~umask``
  permissions; a replaced file keeps its own.
* Operating-system errors while writing become ``OutputError("cannot write PATH: REASON")``, e.g.
  ``cannot write out.png: no space left on device``; ``errno`` is kept.
"""

from __future__ import annotations

import errno as errno_codes
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from typing import BinaryIO


class OutputError(OSError):
    """An output that cannot be written; the message names the file (and the argument) and why."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return self.args[0]


def reason(err: OSError) -> str:
    """``err``'s cause in words, e.g. ``no space left on device``."""
    if err.errno == errno_codes.ENOSPC:
        return "no space left on device"
    return (err.strerror or str(err)).lower()


def _nearest_existing(folder: str) -> str:
    folder = os.path.abspath(folder or ".")
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    return folder


def _probe(folder: str) -> None:
    """Create and remove a temporary file in ``folder``; raises OSError when it cannot."""
    fd, tmp = tempfile.mkstemp(prefix=".dzsr-probe-", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def check_folder(folder: str | os.PathLike, what: str) -> None:
    """``folder`` (created later if missing) can hold new files: see the module docstring."""
    folder = os.fspath(folder)
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        raise OutputError(
            f"{what}: cannot use folder {folder}: {existing} is a file, not a folder",
            errno_codes.ENOTDIR,
        )
    try:
        _probe(existing)
    except OSError as err:
        raise OutputError(
            f"{what}: folder {existing} is not writable ({reason(err)})", err.errno
        ) from None


def check_output(
    path: str | os.PathLike,
    what: str,
    extensions: Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> str:
    """Refuse an output ``path`` that cannot or must not be written (module docstring); returns it."""
    path = os.fspath(path)
    if not path:
        raise OutputError(f"{what}: empty output path")
    if extensions is not None:
        extensions = tuple(extensions)
        ext = os.path.splitext(path)[1].lower()
        if not ext:
            raise OutputError(
                f"{what}: {path} has no file extension (expected one of {', '.join(extensions)})"
            )
        if ext not in extensions:
            raise OutputError(
                f"{what}: {path} has the unknown extension {ext!r} (expected one of "
                f"{', '.join(extensions)})"
            )
    if os.path.isdir(path):
        raise OutputError(f"{what}: {path} is a folder; give a file path", errno_codes.EISDIR)
    if os.path.exists(path):
        for source in inputs:
            if source is not None and os.path.exists(source) and os.path.samefile(path, source):
                raise OutputError(
                    f"{what}: {path} is the input file {os.fspath(source)}; writing it would "
                    f"replace that input, choose another output path"
                )
    check_folder(os.path.dirname(path), what)
    return path


def _open(fd: int) -> BinaryIO:
    """The temporary file as a binary file object (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


def _new_file_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` atomically (module docstring); creates parent folders."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        mode = _new_file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, mode)
        with _open(fd) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except OSError as err:
        if isinstance(err, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {reason(err)}", err.errno) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``atomic_write`` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


__all__ = ["OutputError", "atomic_write", "check_folder", "check_output", "reason", "write_bytes"]
