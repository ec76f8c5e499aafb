"""Data preparation, datasets and the training sampler (docs/design.md#data)."""

from .crops import central_box, reference_box
from .datasets import (
    DualZoomDataset,
    ShortTeleFolder,
    TrainPatches,
    camerafusion,
    nikon,
    worker_init,
)
from .degrade import Degradation, noise_map
from .imageio import read_rgb, to_float, to_hwc, to_tensor, write_rgb
from .prepare import (
    ColourFit,
    estimate_flow,
    fit_colour,
    match_colour,
    prepare_folder,
    prepare_pair,
    warp_with_flow,
)

__all__ = [
    "central_box",
    "reference_box",
    "DualZoomDataset",
    "ShortTeleFolder",
    "TrainPatches",
    "camerafusion",
    "nikon",
    "worker_init",
    "Degradation",
    "noise_map",
    "read_rgb",
    "to_float",
    "to_hwc",
    "to_tensor",
    "write_rgb",
    "ColourFit",
    "estimate_flow",
    "fit_colour",
    "match_colour",
    "prepare_folder",
    "prepare_pair",
    "warp_with_flow",
]
