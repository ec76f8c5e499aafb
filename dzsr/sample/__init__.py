"""Bundled dual-zoom samples built deterministically from scikit-image's photographs
(``builder``), and training pairs built from bundled pictures (``training``)."""

from .builder import DEMO, HELD_OUT, SAMPLE_NAMES, bundled_photo, load_sample, write_sample
from .training import (
    PHOTOS_AS,
    SYNTHETIC_SIZE,
    frame_pair,
    photo_frame_pair,
    photo_pair,
    prepare_sample_data,
    sample_data_problems,
    synthetic_frame_pair,
    training_pairs,
)

__all__ = [
    "DEMO",
    "HELD_OUT",
    "PHOTOS_AS",
    "SAMPLE_NAMES",
    "SYNTHETIC_SIZE",
    "bundled_photo",
    "frame_pair",
    "load_sample",
    "photo_frame_pair",
    "photo_pair",
    "prepare_sample_data",
    "sample_data_problems",
    "synthetic_frame_pair",
    "training_pairs",
    "write_sample",
]
