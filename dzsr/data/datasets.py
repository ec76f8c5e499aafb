"""Datasets: prepared dual-zoom pairs (DRealSR-Nikon x4, CameraFusion x2), raw short/tele folders,
and the random-patch training sampler.

Layout of prepared pairs (docs/design.md#data), ``root`` or ``root/Nikon`` / ``root/CameraFusion``::

    {split}_LR/NAME_x1.png    short-focus centre crop, h x w
    {split}_HR/NAME_x{s}.png  aligned telephoto (ground truth), exactly s*h x s*w

The reference of a full image is the centre 1/s crop of the HR (``crops.reference_box``).

Every item is a dict of float32 CHW tensors in [0, 1] (the noise map is signed) plus metadata.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .crops import reference_box, scale_box
from .degrade import QUALITY_RANGE, SIGMA_RANGE, Degradation, noise_map
from .imageio import is_image_file, read_rgb, to_tensor, to_uint8
from .prepare import list_short_tele_pairs

NIKON_SCALE, CAMERAFUSION_SCALE = 4, 2


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file header, with a clear error for unreadable files."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return height, width


def _find_split_dir(root: str, split: str, kind: str, subdir: str | None) -> str:
    candidates = [os.path.join(root, f"{split}_{kind}")]
    if subdir:
        candidates.append(os.path.join(root, subdir, f"{split}_{kind}"))
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise FileNotFoundError(f"folder not found: {' or '.join(candidates)}")


class DualZoomDataset(Dataset):
    """Full prepared images ``{split}_LR/NAME_x1.*`` with ``{split}_HR/NAME_x{scale}.*``.

    Item: ``lr (3, h, w)``, ``gt (3, s*h, s*w)``, ``ref (3, s*rh, s*rw)`` (centre 1/s crop of gt),
    ``ref_box`` int64 ``[y0, y1, x0, x1]`` of the reference footprint on the LR grid, ``name``.
    Sizes are checked at construction (HR must be exactly ``scale`` x LR); with ``in_memory`` the
    images are decoded once and kept as integer arrays (shared with forked DataLoader workers).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        scale: int = NIKON_SCALE,
        in_memory: bool = True,
        subdir: str | None = None,
    ):
        root = os.fspath(root)
        self.scale = scale
        lr_dir = _find_split_dir(root, split, "LR", subdir)
        hr_dir = _find_split_dir(os.path.dirname(lr_dir), split, "HR", None)
        self.names, self.lr_paths, self.hr_paths = [], [], []
        for fname in sorted(os.listdir(lr_dir)):
            stem, ext = os.path.splitext(fname)
            if not (is_image_file(fname) and stem.endswith("_x1")):
                continue
            hr_name = f"{stem[:-3]}_x{scale}{ext}"
            hr_path = os.path.join(hr_dir, hr_name)
            if not os.path.isfile(hr_path):
                raise FileNotFoundError(
                    f"HR image missing for {os.path.join(lr_dir, fname)}: expected {hr_path}"
                )
            self.names.append(hr_name)
            self.lr_paths.append(os.path.join(lr_dir, fname))
            self.hr_paths.append(hr_path)
        if not self.names:
            raise FileNotFoundError(f"no images named *_x1.<ext> in {lr_dir}")
        self.lr_sizes = []
        for lr_path, hr_path in zip(self.lr_paths, self.hr_paths):
            (h, w), (hh, hw) = _image_size(lr_path), _image_size(hr_path)
            if (hh, hw) != (scale * h, scale * w):
                raise ValueError(
                    f"size of {hr_path} is {hh}x{hw}, inconsistent with scale {scale}: "
                    f"{lr_path} is {h}x{w}, so {scale * h}x{scale * w} was expected"
                )
            self.lr_sizes.append((h, w))
        self._cache = [self._read(i) for i in range(len(self.names))] if in_memory else None

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_rgb(self.lr_paths[index]), read_rgb(self.hr_paths[index])

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored ``(lr, hr)`` integer HWC RGB arrays of image ``index``."""
        return self._cache[index] if self._cache is not None else self._read(index)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        lr, gt = self.load_pair(index)
        box = reference_box(lr.shape[0], lr.shape[1], self.scale)
        y0, y1, x0, x1 = scale_box(box, self.scale)
        return {
            "lr": to_tensor(lr),
            "gt": to_tensor(gt),
            "ref": to_tensor(gt[y0:y1, x0:x1]),
            "ref_box": torch.tensor(box, dtype=torch.int64),
            "name": self.names[index],
        }


def nikon(root: str | os.PathLike, split: str = "test", in_memory: bool = True) -> DualZoomDataset:
    """DRealSR-Nikon x4 (``root`` holds ``train_LR`` ... or a ``Nikon/`` folder with them)."""
    return DualZoomDataset(root, split, NIKON_SCALE, in_memory, subdir="Nikon")


def camerafusion(
    root: str | os.PathLike, split: str = "test", in_memory: bool = True
) -> DualZoomDataset:
    """CameraFusion x2 (``root`` holds ``train_LR`` ... or a ``CameraFusion/`` folder with them)."""
    return DualZoomDataset(root, split, CAMERAFUSION_SCALE, in_memory, subdir="CameraFusion")


class ShortTeleFolder(Dataset):
    """Raw captures ``root/short/NAME.*`` + ``root/tele/NAME.*``: items ``short``, ``tele`` (CHW), ``name``."""

    def __init__(self, root: str | os.PathLike):
        self.pairs = list_short_tele_pairs(root)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, short_path, tele_path = self.pairs[index]
        return {
            "short": to_tensor(read_rgb(short_path)),
            "tele": to_tensor(read_rgb(tele_path)),
            "name": name,
        }


def _augment(img: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """HWC flips in the authors' order: horizontal, vertical, then transpose."""
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.swapaxes(0, 1)
    return np.ascontiguousarray(img)


class TrainPatches(Dataset):
    """Random training patches from a ``DualZoomDataset`` (the authors' ``_getitem_train``).

    Item ``index`` uses image ``index % len(source)`` and a generator seeded by
    ``(seed, epoch, index)``, so a sample does not depend on worker count or order (exact resume):
      * ``lr (3, P, P)`` random LR patch; ``gt (3, sP, sP)`` the HR patch above it;
      * the same random horizontal flip, vertical flip and transpose (each with p=0.5) on both, and
        with ``channel_shuffle`` the same random permutation of the RGB channels (an augmentation
        against colour bias, e.g. from greyscale-heavy training sets; off by default);
      * reference: a random ``q x q`` box inside the LR patch, ``q = P // s`` (self-supervised: the
        reference is cut from the GT patch, as the authors do): ``ref (3, s*q, s*q)`` the GT there,
        ``lr_ref (3, q, q)`` the LR there, ``ref_box`` int64 ``[y0, y1, x0, x1]`` in LR-patch pixels
        (the authors' ``crop_coord``);
      * ``noise (3, P, P)``: the pseudo-LR noise map of ``gt`` (``degrade.noise_map``, noise sigma and
        JPEG quality drawn from ``noise_sigma`` and ``jpeg_quality``, ``None`` to leave that step
        out; the authors' ranges by default), made here so DataLoader workers compute it in
        parallel with training; all zeros with ``noise=False`` (pseudo-LR = KernelGen output alone,
        for clean data of a known degradation such as the bundled sample).
    Call ``set_epoch`` before each epoch (as with ``DistributedSampler``) to get fresh samples. The
    item path uses no OpenCV thread pool (only PNG/JPEG codecs), so forked DataLoader workers cannot
    deadlock on a pool inherited from the parent (``cv2.setNumThreads`` in a worker can).
    """

    def __init__(
        self,
        source: DualZoomDataset,
        patch_size: int = 48,
        length: int = 16000,
        seed: int = 0,
        noise_sigma: tuple[int, int] | None = SIGMA_RANGE,
        jpeg_quality: tuple[int, int] | None = QUALITY_RANGE,
        noise: bool = True,
        channel_shuffle: bool = False,
    ):
        self.noise_sigma, self.jpeg_quality = Degradation.check_ranges(noise_sigma, jpeg_quality)
        if not isinstance(channel_shuffle, bool):
            raise TypeError(f"data.channel_shuffle must be true or false, got {channel_shuffle!r}")
        self.channel_shuffle = channel_shuffle
        if not isinstance(noise, bool):
            raise TypeError(f"data.noise_map must be true or false, got {noise!r}")
        self.noise = noise
        if patch_size < source.scale:
            raise ValueError(
                f"patch_size must be at least the scale {source.scale}, got {patch_size}"
            )
        for name, (h, w) in zip(source.names, source.lr_sizes):
            if h < patch_size or w < patch_size:
                raise ValueError(
                    f"LR image of {name} is {h}x{w}, smaller than the {patch_size}x{patch_size} patch"
                )
        self.source, self.patch_size, self.length, self.seed = source, patch_size, length, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch``: item i's RNG is seeded by (seed, epoch, i)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s, p = self.source.scale, self.patch_size
        image = index % len(self.source)
        lr, gt = self.source.load_pair(image)
        y = int(rng.integers(0, lr.shape[0] - p, endpoint=True))
        x = int(rng.integers(0, lr.shape[1] - p, endpoint=True))
        flips = rng.random(3) < 0.5
        lr_p = _augment(lr[y : y + p, x : x + p], *flips)
        gt_p = _augment(gt[s * y : s * (y + p), s * x : s * (x + p)], *flips)
        if self.channel_shuffle:
            perm = rng.permutation(3)
            lr_p, gt_p = (
                np.ascontiguousarray(lr_p[..., perm]),
                np.ascontiguousarray(gt_p[..., perm]),
            )
        q = p // s
        ry, rx = (int(v) for v in rng.integers(0, p - q, size=2, endpoint=True))
        box = (ry, ry + q, rx, rx + q)
        gy0, gy1, gx0, gx1 = scale_box(box, s)
        if self.noise:
            gt_u8 = gt_p if gt_p.dtype == np.uint8 else to_uint8(gt_p.astype(np.float32) / 65535.0)
            noise = noise_map(
                gt_u8, s, rng, Degradation.sample(rng, self.noise_sigma, self.jpeg_quality)
            )
        else:
            noise = torch.zeros(3, p, p)
        return {
            "lr": to_tensor(lr_p),
            "gt": to_tensor(gt_p),
            "noise": noise,
            "ref": to_tensor(gt_p[gy0:gy1, gx0:gx1]),
            "lr_ref": to_tensor(lr_p[ry : ry + q, rx : rx + q]),
            "ref_box": torch.tensor(box, dtype=torch.int64),
            "name": self.source.names[image],
        }


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (no oversubscription).

    It deliberately leaves OpenCV alone: ``cv2.setNumThreads`` in a forked worker can deadlock on the
    thread pool inherited from the parent, and the sampler never uses that pool.
    """
    torch.set_num_threads(1)
