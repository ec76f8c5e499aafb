"""Top-1 patch-correlation matching (reference, C++/CUDA, Triton) and the flow/offset helpers."""

from .flow import flow_to_offsets, match_flow
from .op import patch_match

__all__ = ["flow_to_offsets", "match_flow", "patch_match"]
