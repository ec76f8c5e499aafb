"""Training losses of SelfDZSR."""
from .perceptual import SW_LAYER_WEIGHTS, SW_SCALE, VGG19_FILE, SWLoss, VGG19Features

__all__ = ["SWLoss", "SW_LAYER_WEIGHTS", "SW_SCALE", "VGG19Features", "VGG19_FILE"]
