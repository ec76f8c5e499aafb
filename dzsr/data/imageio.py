"""Reading and writing RGB images with clear errors.

Conventions: images in memory are HWC numpy arrays in RGB order. ``read_rgb`` returns the stored
integer array (uint8 or uint16) so datasets can keep images compactly; ``to_float`` turns any of
them into float32 in [0, 1]. ``to_tensor`` / ``to_hwc`` convert between HWC numpy and CHW torch.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB HWC array (uint8 or uint16): gray is repeated, alpha dropped,
    the EXIF orientation applied (phone and camera JPEGs).

    Raises FileNotFoundError if the file does not exist and ValueError if it cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ValueError(f"cannot read image {path}: not a decodable image file")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image {path} has unsupported sample type {img.dtype} (expected 8 or 16 bit)")
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


def write_rgb(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an RGB HWC image (uint8, or float in [0, 1] rounded to uint8); creates parent folders."""
    path = os.fspath(path)
    check_rgb("img", img)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write image {path}: unsupported extension or unwritable folder")


def check_rgb(name: str, img: object) -> np.ndarray:
    """``img`` must be an HWC numpy array with 3 channels (uint8, uint16 or float)."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, 3), got {type(img).__name__}")
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
