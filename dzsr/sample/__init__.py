"""Bundled dual-zoom samples built deterministically from scikit-image's photographs."""
from .builder import DEMO, HELD_OUT, SAMPLE_NAMES, load_sample, write_sample

__all__ = ["DEMO", "HELD_OUT", "SAMPLE_NAMES", "load_sample", "write_sample"]
