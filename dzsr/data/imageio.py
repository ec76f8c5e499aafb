"""Reading and writing RGB images with clear errors.

Conventions: images in memory are HWC numpy arrays in RGB order. ``read_rgb`` returns the stored
integer array (uint8 or uint16) so datasets can keep images compactly; ``to_float`` turns any of
them into float32 in [0, 1]. ``to_tensor`` / ``to_hwc`` convert between HWC numpy and CHW torch.

Incomplete files are errors, not images: OpenCV's ``imread`` decodes a truncated JPEG into an image
whose missing rows are grey (and only warns on stderr). ``read_rgb`` reads the bytes and, before
decoding, checks that the file's own structure reaches its end: a JPEG must reach its end-of-image
marker (EOI, FF D9) after its last scan, a PNG its IEND chunk, a WebP the length in its RIFF header, a
BMP the file size in its header (TIFF: libtiff itself refuses truncated files). Bytes after the end
(camera trailers, MPO) are allowed. This structural check was chosen over decoding with PIL
(``LOAD_TRUNCATED_IMAGES=False``) because PIL cannot decode 16-bit RGB PNGs and would change the
decoder, and so the pixels, of every image read; the check costs one pass over the file's bytes.

``write_rgb`` encodes in memory and writes through ``dzsr.outputs.atomic_write``: an existing file
is replaced only by a complete new one, and an unknown extension is refused before anything is
written.
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np
import torch

from ..outputs import write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """Whether ``name`` ends with one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _jpeg_end(data: bytes) -> bool:
    """Whether the JPEG ``data`` reaches its EOI marker: marker segments are skipped by their
    lengths, entropy-coded scan data up to the next marker that is not a stuffed byte or RSTn."""
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:  # extraneous bytes between segments: libjpeg skips them too
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if pos + 4 > len(data):
            return False
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: skip its entropy-coded data
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= len(data):
                    return False
                if data[pos + 1] != 0 and not 0xD0 <= data[pos + 1] <= 0xD7:
                    break
                pos += 2
    return False


def _png_end(data: bytes) -> bool:
    """Whether the PNG ``data``'s chunks, walked by their lengths, reach a complete IEND chunk."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        pos += 12 + length
        if pos > len(data):
            return False
        if kind == b"IEND":
            return True
    return False


def _complete(data: bytes) -> bool:
    """False when ``data`` is a JPEG, PNG, WebP or BMP file cut short (module docstring)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_end(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_end(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    if data[:2] == b"BM" and len(data) >= 6:
        return len(data) >= int.from_bytes(data[2:6], "little")
    return True


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB HWC array (uint8 or uint16): gray is repeated, alpha dropped,
    the EXIF orientation applied (phone and camera JPEGs).

    Raises FileNotFoundError if the file does not exist and ValueError if it is empty, truncated
    (module docstring) or cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    if not _complete(data):
        raise ValueError(
            f"cannot read image {path}: the file is truncated (incomplete download or copy?)"
        )
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ValueError(f"cannot read image {path}: not a decodable image file")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"image {path} has unsupported sample type {img.dtype} (expected 8 or 16 bit)"
        )
    # BGR -> RGB by slicing, not cv2.cvtColor: no OpenCV thread pool in DataLoader workers.
    return np.ascontiguousarray(img[:, :, ::-1])


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float HWC image -> float32 in [0, 1] (floats are clipped, not rescaled)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return np.clip(img, 0.0, 1.0).astype(np.float32)
    raise TypeError(f"image must be uint8, uint16 or float, got {img.dtype}")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float image in [0, 1] (or uint8) -> uint8, rounded to nearest."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(to_float(img) * 255.0), 0, 255).astype(np.uint8)


def writable_extensions() -> tuple[str, ...]:
    """The image extensions ``write_rgb`` can encode here."""
    return tuple(e for e in IMAGE_EXTENSIONS if cv2.haveImageWriter("x" + e))


def write_rgb(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an RGB HWC image (uint8, or float in [0, 1] rounded to uint8) atomically (module
    docstring); creates parent folders. The format follows the extension (``writable_extensions``)."""
    path = os.fspath(path)
    check_rgb("img", img)
    ext = os.path.splitext(path)[1].lower()
    if ext not in writable_extensions():
        raise ValueError(
            f"cannot write image {path}: unknown image extension {ext or '(none)'!r} "
            f"(expected one of {', '.join(writable_extensions())})"
        )
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot write image {path}: OpenCV could not encode it as {ext}")
    write_bytes(path, encoded.tobytes())


def check_rgb(name: str, img: object) -> np.ndarray:
    """``img`` must be an HWC numpy array with 3 channels (uint8, uint16 or float)."""
    if not isinstance(img, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array of shape (H, W, 3), got {type(img).__name__}"
        )
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB, HWC), got shape {img.shape}")
    if not (img.dtype in (np.uint8, np.uint16) or np.issubdtype(img.dtype, np.floating)):
        raise TypeError(f"{name} must be uint8, uint16 or float, got {img.dtype}")
    return img


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC numpy image -> CHW float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(to_float(img).transpose(2, 0, 1)))


def to_hwc(t: torch.Tensor) -> np.ndarray:
    """CHW tensor -> HWC float32 numpy array (values unchanged)."""
    return np.ascontiguousarray(t.detach().cpu().float().numpy().transpose(1, 2, 0))
