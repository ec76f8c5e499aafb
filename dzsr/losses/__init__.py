"""Training losses of SelfDZSR."""

from .kernel import kernel_centroid_loss, kernel_gen_loss
from .objective import SelfDZSRObjective
from .perceptual import (
    SW_LAYER_WEIGHTS,
    SW_SCALE,
    VGG19_FILE,
    LOSWLoss,
    SWLoss,
    VGG19Features,
    losw_window,
)

__all__ = [
    "LOSWLoss",
    "SWLoss",
    "SelfDZSRObjective",
    "kernel_centroid_loss",
    "kernel_gen_loss",
    "losw_window",
    "SW_LAYER_WEIGHTS",
    "SW_SCALE",
    "VGG19Features",
    "VGG19_FILE",
]
