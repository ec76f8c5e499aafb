"""The authors' checkpoints (cszhilu1998/SelfDZSR): their key names, both ways, and their scale.

They save ``{"state_dict": net.state_dict()}`` per network with ``torch.save``:
``RefSR_model_*.pth`` (``SelfRefSR``, our ``RestorationNet``), ``KernelGen_model_*.pth`` (our
``KernelGen``) and ``Student_model_*.pth`` (``ContrasExtractorSep``, our ``MatchingExtractor``).
Keys may carry a ``module.`` prefix (DataParallel). Their names map to ours by the module-prefix
tables below; the AdaSTN buffer ``regular_matrix`` (the constant 3x3 tap grid) has no counterpart
here: it is checked on the way in and recreated on the way out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..models import SelfDZSR
from .errors import CheckpointMismatchError, raise_mismatch
from .storage import as_state_dict, read_file

NETWORKS = ("restoration", "kernel_gen", "extractor")

# The AdaSTN tap grid the authors store as a buffer: row 0 = gy, row 1 = gx of tap t = 3i + j.
REGULAR_MATRIX = torch.tensor(
    [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]], dtype=torch.float32
)
_ADASTN = [
    ("offsets.pair_conv", "concat.0"),
    ("offsets.group_conv", "concat2.0"),
    ("offsets.to_matrix", "transform_matrix_conv"),
    ("offsets.to_translation", "translation_conv"),
    ("deform", "adapt_conv"),
]


def _restoration_rules(n_blocks: int, n_up: int) -> list[tuple[str, str]]:
    rules = [
        ("head_mean", "head.0"),
        ("head", "head.1"),
        ("reference.encoder.mean_shift", "ref_extractor.0"),
        ("reference.encoder.convs.0", "ref_extractor.1.0"),
    ]
    rules += [(f"reference.encoder.convs.{i + 1}", f"ref_extractor.2.{2 * i}") for i in range(4)]
    rules += [
        ("reference.paste_head.mean_shift", "ref_head.0"),
        ("reference.paste_head.conv", "ref_head.2"),
        ("reference.warp", "deform_conv"),
    ]
    adastns = [(f"align.{k}", f"ada{k + 1}") for k in range(3)] + [("reference.align", "ref_ada")]
    for ours, theirs in adastns:
        rules += [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in _ADASTN]
    rules += [("predictor.mean_shift", "predictor.mean"), ("predictor.head", "predictor.head.0.0")]
    rules += [(f"predictor.body.{2 * i}", f"predictor.predictor.{i}.0") for i in range(5)]
    rules += [("fusion", "concat_fea.0")]
    for i in range(n_blocks):
        rules += [
            (f"blocks.{i}.conv1", f"block{i}.res.0"),
            (f"blocks.{i}.conv2", f"block{i}.res.2"),
            (f"blocks.{i}.modulation.0", f"block{i}.mlp.0.0"),
            (f"blocks.{i}.modulation.2", f"block{i}.mlp.1"),
        ]
    rules += [("body_tail", "body_lastconv"), ("tail", "tail.0"), ("tail_mean", "tail.1")]
    rules += [(f"upsampler.convs.{i}", f"up.{i}.0") for i in range(n_up)]
    return rules


_KERNEL_GEN_RULES = [
    ("mean_sub", "head_mean"),
    ("mean_add", "tail_mean"),
    ("head", "head.0"),
    ("conv7", "conv_7x7.0"),
    ("conv5", "conv_5x5.0"),
    ("conv3", "conv_3x3.0"),
    ("pointwise.0", "conv_1x1.0"),
    ("pointwise.2", "conv_1x1.2"),
    ("pointwise.4", "conv_1x1.4"),
    ("tail", "tail"),
    ("guide.0", "guide_net.0.0"),
    ("guide.2", "guide_net.1.0"),
    ("guide.4", "guide_net.1.2"),
    ("guide.6", "guide_net.1.4"),
    ("guide.8", "guide_net.3"),
]
_EXTRACTOR_RULES = [
    ("query_trunk", "feature_extraction_image1"),
    ("ref_trunk", "feature_extraction_image2"),
]


def _rules(network: str, module: torch.nn.Module) -> list[tuple[str, str]]:
    if network == "restoration":
        return _restoration_rules(len(module.blocks), len(module.upsampler.convs))
    if network == "kernel_gen":
        return _KERNEL_GEN_RULES
    return _EXTRACTOR_RULES


def _our_to_official_key(key: str, network: str, rules) -> str:
    if network == "extractor":  # their trunk sits one level deeper, under ``model.``
        trunk, leaf = key.split(".", 1)
        theirs = dict(rules)[trunk]
        return f"{theirs}.{leaf}" if leaf in ("mean", "std") else f"{theirs}.model.{leaf}"
    module, leaf = key.rsplit(".", 1)
    for ours, theirs in rules:
        if module == ours:
            return f"{theirs}.{leaf}"
    raise KeyError(f"no official name for {network} key {key!r}")


def _regular_matrix_keys(network: str) -> list[str]:
    if network != "restoration":
        return []
    return [f"{m}.regular_matrix" for m in ("ada1", "ada2", "ada3", "ref_ada")]


def official_key_map(network: str, module: torch.nn.Module) -> dict[str, str]:
    """{official key: our key} for every tensor of ``module`` (a ``RestorationNet``, ``KernelGen``
    or ``MatchingExtractor``, named by ``network`` in ``NETWORKS``)."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    rules = _rules(network, module)
    return {_our_to_official_key(k, network, rules): k for k in module.state_dict()}


def official_scale(state_dict: Mapping[str, torch.Tensor]) -> int:
    """The scale of the authors' restoration (RefSR) state dict (``as_state_dict``), from its
    upsampler: two x2 stages (``up.1.*``) for x4, else one stage of 4 (x2) or 9 (x3)
    pixel-shuffle groups."""
    if any(k.startswith("up.1.") for k in state_dict):
        return 4
    up = state_dict.get("up.0.0.weight")
    if up is None:
        raise ValueError(
            "not a SelfDZSR restoration (RefSR) state dict: no upsampler weights up.0.0.weight"
        )
    return 3 if up.shape[0] == 64 * 9 else 2


def convert_official(
    state_dict, network: str, module: torch.nn.Module, strict: bool = True
) -> dict[str, torch.Tensor]:
    """The authors' state dict for ``network`` -> a state dict for our ``module``.

    strict: missing or unexpected keys raise ``CheckpointMismatchError`` listing them (non-strict
    skips them); mis-shaped keys and a ``regular_matrix`` differing from the tap grid always raise.
    """
    sd = as_state_dict(state_dict)
    key_map = official_key_map(network, module)
    expected = module.state_dict()
    constants = set(_regular_matrix_keys(network))
    for key in constants & sd.keys():
        if not torch.equal(sd[key].float().cpu(), REGULAR_MATRIX):
            raise CheckpointMismatchError(
                f"{key} must be the 3x3 tap grid {REGULAR_MATRIX.tolist()}, got {sd[key].tolist()}"
            )
    missing = [k for k in list(key_map) + sorted(constants) if k not in sd]
    unexpected = [k for k in sd if k not in key_map and k not in constants]
    misshaped = [
        (k, sd[k].shape, expected[key_map[k]].shape)
        for k in key_map
        if k in sd and sd[k].shape != expected[key_map[k]].shape
    ]
    raise_mismatch(
        f"official {network} state dict",
        missing if strict else [],
        unexpected if strict else [],
        misshaped,
    )
    return {key_map[k]: v for k, v in sd.items() if k in key_map}


def to_official(
    state_dict: Mapping[str, torch.Tensor], network: str, module: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Our ``module``'s state dict -> the authors' names (with ``regular_matrix`` recreated)."""
    inverse = {ours: theirs for theirs, ours in official_key_map(network, module).items()}
    out = {inverse[k]: v for k, v in state_dict.items()}
    out.update({k: REGULAR_MATRIX.clone() for k in _regular_matrix_keys(network)})
    return out


def _read(source) -> Mapping:
    return source if isinstance(source, Mapping) else read_file(os.fspath(source))


def load_official(
    model: SelfDZSR, restoration=None, kernel_gen=None, extractor=None, strict: bool = True
) -> SelfDZSR:
    """Load the authors' checkpoints (paths or already loaded dicts) into ``model``'s networks.

    E.g. ``load_official(SelfDZSR(4), "RefSR_model_401.pth", "KernelGen_model_401.pth",
    "Student_model_400.pth")``; a network given as None is left as it is.
    """
    for network, source in (
        ("restoration", restoration),
        ("kernel_gen", kernel_gen),
        ("extractor", extractor),
    ):
        if source is not None:
            module = getattr(model, network)
            state = convert_official(_read(source), network, module, strict)
            module.load_state_dict(state, strict=strict)
    return model


__all__ = [
    "NETWORKS",
    "REGULAR_MATRIX",
    "convert_official",
    "load_official",
    "official_key_map",
    "official_scale",
    "to_official",
]
