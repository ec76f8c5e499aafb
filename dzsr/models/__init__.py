"""SelfDZSR networks: degradation (KernelGen), AdaSTN, reference branch, restoration, top level."""

from .adastn import AdaSTN, OffsetEstimator
from .blocks import MeanShift, space_to_depth
from .extractor import MatchingExtractor, VGGTrunk
from .kernel_gen import KernelGen
from .reference_branch import ReferenceBranch, matching_offsets
from .selfdzsr import RestorationNet, SelfDZSR, SelfDZSROutput

__all__ = [
    "AdaSTN",
    "KernelGen",
    "MatchingExtractor",
    "MeanShift",
    "OffsetEstimator",
    "ReferenceBranch",
    "RestorationNet",
    "SelfDZSR",
    "SelfDZSROutput",
    "VGGTrunk",
    "matching_offsets",
    "space_to_depth",
]
