"""Checkpoints: converting the authors' state dicts, and saving/loading our own.

The authors (cszhilu1998/SelfDZSR) save ``{"state_dict": net.state_dict()}`` per network:
``RefSR_model_*.pth`` (``SelfRefSR``, our ``RestorationNet``), ``KernelGen_model_*.pth`` (our
``KernelGen``) and ``Student_model_*.pth`` (``ContrasExtractorSep``, our ``MatchingExtractor``).
Keys may carry a ``module.`` prefix (DataParallel). Their names map to ours by the module-prefix
tables below; the AdaSTN buffer ``regular_matrix`` (the constant 3x3 tap grid) has no counterpart
here: it is checked on the way in and recreated on the way out.

Our own checkpoints are one file: ``{"format": "dzsr-checkpoint", "version": 1, "dzsr_version",
"torch_version", "config": {"scale", "drop_prob", "paste_prob"}, "state_dict", "extra"}``, written
atomically with ``dzsr.outputs.atomic_write`` (temporary file in the same folder, fsync,
``os.replace``; the old file is intact after any failure).

Reading (``read_file``, used for every checkpoint and weights file): a missing path is a
``FileNotFoundError``; an empty, truncated, corrupt or non-PyTorch file, or one that needs more
than weights-only unpickling, is one ``ValueError`` "cannot read checkpoint PATH: ..." (never
torch's advice to load untrusted files with ``weights_only=False``).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch

from .models import SelfDZSR
from .outputs import atomic_write

NETWORKS = ("restoration", "kernel_gen", "extractor")
FORMAT = "dzsr-checkpoint"
VERSION = 1

# The AdaSTN tap grid the authors store as a buffer: row 0 = gy, row 1 = gx of tap t = 3i + j.
REGULAR_MATRIX = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]], dtype=torch.float32)
_ADASTN = [("offsets.pair_conv", "concat.0"), ("offsets.group_conv", "concat2.0"),
           ("offsets.to_matrix", "transform_matrix_conv"), ("offsets.to_translation", "translation_conv"),
           ("deform", "adapt_conv")]


class CheckpointMismatchError(RuntimeError):
    """A state dict does not fit the network; the message lists missing, unexpected and mis-shaped keys."""


def _restoration_rules(n_blocks: int, n_up: int) -> list[tuple[str, str]]:
    rules = [("head_mean", "head.0"), ("head", "head.1"),
             ("reference.encoder.mean_shift", "ref_extractor.0"), ("reference.encoder.convs.0", "ref_extractor.1.0")]
    rules += [(f"reference.encoder.convs.{i + 1}", f"ref_extractor.2.{2 * i}") for i in range(4)]
    rules += [("reference.paste_head.mean_shift", "ref_head.0"), ("reference.paste_head.conv", "ref_head.2"),
              ("reference.warp", "deform_conv")]
    for ours, theirs in [(f"align.{k}", f"ada{k + 1}") for k in range(3)] + [("reference.align", "ref_ada")]:
        rules += [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in _ADASTN]
    rules += [("predictor.mean_shift", "predictor.mean"), ("predictor.head", "predictor.head.0.0")]
    rules += [(f"predictor.body.{2 * i}", f"predictor.predictor.{i}.0") for i in range(5)]
    rules += [("fusion", "concat_fea.0")]
    for i in range(n_blocks):
        rules += [(f"blocks.{i}.conv1", f"block{i}.res.0"), (f"blocks.{i}.conv2", f"block{i}.res.2"),
                  (f"blocks.{i}.modulation.0", f"block{i}.mlp.0.0"), (f"blocks.{i}.modulation.2", f"block{i}.mlp.1")]
    rules += [("body_tail", "body_lastconv"), ("tail", "tail.0"), ("tail_mean", "tail.1")]
    rules += [(f"upsampler.convs.{i}", f"up.{i}.0") for i in range(n_up)]
    return rules


_KERNEL_GEN_RULES = [("mean_sub", "head_mean"), ("mean_add", "tail_mean"), ("head", "head.0"), ("conv7", "conv_7x7.0"),
                     ("conv5", "conv_5x5.0"), ("conv3", "conv_3x3.0"), ("pointwise.0", "conv_1x1.0"),
                     ("pointwise.2", "conv_1x1.2"), ("pointwise.4", "conv_1x1.4"), ("tail", "tail"),
                     ("guide.0", "guide_net.0.0"), ("guide.2", "guide_net.1.0"), ("guide.4", "guide_net.1.2"),
                     ("guide.6", "guide_net.1.4"), ("guide.8", "guide_net.3")]
_EXTRACTOR_RULES = [("query_trunk", "feature_extraction_image1"), ("ref_trunk", "feature_extraction_image2")]


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
    return [f"{m}.regular_matrix" for m in ("ada1", "ada2", "ada3", "ref_ada")] if network == "restoration" else []


def official_key_map(network: str, module: torch.nn.Module) -> dict[str, str]:
    """{official key: our key} for every tensor of ``module`` (a ``RestorationNet``, ``KernelGen`` or
    ``MatchingExtractor``, named by ``network`` in ``NETWORKS``)."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    rules = _rules(network, module)
    return {_our_to_official_key(k, network, rules): k for k in module.state_dict()}


def unwrap_official(obj) -> dict[str, torch.Tensor]:
    """The authors' file contents -> a flat state dict (drops the ``state_dict`` wrapper and ``module.``)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, Mapping) else "a dict with other entries than named tensors"
        raise ValueError(f"expected a state dict (or {{'state_dict': ...}}) of named tensors, got {what}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _raise_mismatch(what: str, missing, unexpected, misshaped) -> None:
    if missing or unexpected or misshaped:
        lines = [f"{what} does not match the network:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(sorted(missing))}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(sorted(unexpected))}")
        if misshaped:
            lines.append(f"  mis-shaped keys ({len(misshaped)}): " + ", ".join(
                f"{k} (got {tuple(g)}, expected {tuple(e)})" for k, g, e in sorted(misshaped)))
        raise CheckpointMismatchError("\n".join(lines))


def convert_official(state_dict, network: str, module: torch.nn.Module, strict: bool = True) -> dict[str, torch.Tensor]:
    """The authors' state dict for ``network`` -> a state dict for our ``module``.

    strict: missing or unexpected keys raise ``CheckpointMismatchError`` listing them (non-strict
    skips them); mis-shaped keys and a ``regular_matrix`` differing from the tap grid always raise.
    """
    sd = unwrap_official(state_dict)
    key_map = official_key_map(network, module)
    expected = module.state_dict()
    constants = set(_regular_matrix_keys(network))
    for key in constants & sd.keys():
        if not torch.equal(sd[key].float().cpu(), REGULAR_MATRIX):
            raise CheckpointMismatchError(f"{key} must be the 3x3 tap grid {REGULAR_MATRIX.tolist()}, got {sd[key].tolist()}")
    missing = [k for k in list(key_map) + sorted(constants) if k not in sd]
    unexpected = [k for k in sd if k not in key_map and k not in constants]
    misshaped = [(k, sd[k].shape, expected[key_map[k]].shape) for k in key_map
                 if k in sd and sd[k].shape != expected[key_map[k]].shape]
    _raise_mismatch(f"official {network} state dict", missing if strict else [], unexpected if strict else [], misshaped)
    return {key_map[k]: v for k, v in sd.items() if k in key_map}


def to_official(state_dict: Mapping[str, torch.Tensor], network: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our ``module``'s state dict -> the authors' names (with ``regular_matrix`` recreated)."""
    inverse = {ours: theirs for theirs, ours in official_key_map(network, module).items()}
    out = {inverse[k]: v for k, v in state_dict.items()}
    out.update({k: REGULAR_MATRIX.clone() for k in _regular_matrix_keys(network)})
    return out


def read_file(path, what: str = "checkpoint"):
    """``torch.load`` (weights only, on the CPU) of the file ``path``, with the errors of the module
    docstring; ``what`` names the file in them (e.g. "checkpoint", "pretrained weights")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read {what} {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol notes: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - every unpickling / archive failure means "not a checkpoint"
        if isinstance(err, RuntimeError) and "zip archive" in str(err):
            why = "a truncated or damaged PyTorch file"
        elif "Unsupported global" in str(err):
            why = "it holds Python objects other than tensors and plain containers, which dzsr does not load"
        else:
            why = "not a PyTorch checkpoint file (or a damaged one)"
        raise ValueError(f"cannot read {what} {path}: {why}") from None


def _read(source) -> Mapping:
    return source if isinstance(source, Mapping) else read_file(source)


def load_official(model: SelfDZSR, restoration=None, kernel_gen=None, extractor=None, strict: bool = True) -> SelfDZSR:
    """Load the authors' checkpoints (paths or already loaded dicts) into ``model``'s networks.

    E.g. ``load_official(SelfDZSR(4), "RefSR_model_401.pth", "KernelGen_model_401.pth",
    "Student_model_400.pth")``; a network given as None is left as it is.
    """
    for network, source in (("restoration", restoration), ("kernel_gen", kernel_gen), ("extractor", extractor)):
        if source is not None:
            module = getattr(model, network)
            module.load_state_dict(convert_official(_read(source), network, module, strict), strict=strict)
    return model


def model_config(model: SelfDZSR) -> dict:
    """The constructor arguments that rebuild ``model``."""
    return {"scale": model.scale, "drop_prob": model.restoration.align[0].drop_prob,
            "paste_prob": model.restoration.reference.paste_prob}


def save_checkpoint(path, model: SelfDZSR, extra: dict | None = None) -> None:
    """Write ``model`` (state dict + config + version metadata, plus ``extra``, e.g. optimizer state
    and iteration) to ``path`` atomically: a reader sees the old file or the complete new one."""
    from . import __version__

    payload = {"format": FORMAT, "version": VERSION, "dzsr_version": __version__, "torch_version": str(torch.__version__),
               "config": model_config(model), "state_dict": model.state_dict(), "extra": extra or {}}
    atomic_write(path, lambda f: torch.save(payload, f))


def check_payload(ckpt: Mapping, path) -> None:
    """``ckpt`` (a file's contents with ``format == FORMAT``) has a version this dzsr reads and a usable
    ``config`` and ``state_dict``; raises ValueError naming ``path`` otherwise."""
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path} has checkpoint version {version!r}; this dzsr reads up to {VERSION}")
    config, sd = ckpt.get("config"), ckpt.get("state_dict")
    if (not isinstance(config, Mapping) or set(config) - {"scale", "drop_prob", "paste_prob"}
            or config.get("scale") not in (2, 3, 4)):
        raise ValueError(f"{path} is a damaged dzsr checkpoint: its config must hold scale 2, 3 or 4 "
                         f"(and drop_prob, paste_prob), got {config!r}")
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} is a damaged dzsr checkpoint: its state_dict must map names to tensors")
    if not isinstance(ckpt.get("extra", {}), Mapping):
        raise ValueError(f"{path} is a damaged dzsr checkpoint: its extra must be a dict")


def load_checkpoint(path, model: SelfDZSR | None = None, strict: bool = True) -> tuple[SelfDZSR, dict]:
    """Read a file written by ``save_checkpoint``; builds the model from its config when ``model`` is
    None. Returns (model, checkpoint dict). Raises ValueError for other files or newer versions."""
    ckpt = _read(path)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dzsr checkpoint (for the authors' files use load_official)")
    check_payload(ckpt, path)
    if model is None:
        model = SelfDZSR(**ckpt["config"])
    expected = model.state_dict()
    sd = ckpt["state_dict"]
    misshaped = [(k, sd[k].shape, expected[k].shape) for k in sd if k in expected and sd[k].shape != expected[k].shape]
    _raise_mismatch(f"checkpoint {path}", [k for k in expected if k not in sd] if strict else [],
                    [k for k in sd if k not in expected] if strict else [], misshaped)
    model.load_state_dict(sd, strict=strict)
    return model, ckpt


__all__ = ["CheckpointMismatchError", "NETWORKS", "check_payload", "convert_official", "load_checkpoint",
           "load_official", "official_key_map", "read_file", "save_checkpoint", "to_official", "unwrap_official"]
