"""The training-config schema: every key's type, range or choices, default, and whether it may
change on resume.

A config is a mapping of top-level values and the sections ``data``, ``model``, ``init``, ``train``,
``log`` (``SCHEMA`` below; the presets in ``dzsr/configs`` show every key). ``check_config`` turns a
raw mapping (as YAML read it) into a complete, normalised config, or lists what is wrong:
  * an unknown key, at any level, is refused, naming its dotted key and the closest valid one
    (``difflib``: a sibling of similar spelling, else a key of that name in another section);
  * a key without a default must be present; a missing optional key takes its default; a section
    written as null (``init:`` with everything under it commented out) counts as empty;
  * integer: a YAML integer, or a string of one (``"16"``); never a bool, never a float (``16.0``);
  * number: a YAML integer or float, or a string Python's ``float`` reads (YAML 1.1, which PyYAML
    implements, reads ``5e-4`` as a string), finite; stored as a float;
  * bool: YAML ``true`` / ``false`` (PyYAML also reads yes/no/on/off as bools), not 0 / 1 or
    other strings;
  * string: a non-empty YAML string (a number where a path or name is expected is refused: quote
    it);
  * list of names (``data.samples``, ``data.photos``): a list of non-empty strings, null = empty;
  * integer range (``data.noise_sigma``, ``data.jpeg_quality``): null, or ``[low, high]`` integers
    with ``min <= low <= high <= max``; stored as a list;
  * null only where the table says "or null".
Conditions between keys are checked too, once every key is valid on its own
(``_cross_key_problems``): ``data.root`` is given for the dataset kinds that read one (``nikon``,
``camerafusion``, ``folder``); ``data.patch_size`` >= ``scale``; for ``data.kind: sample``, the
names in ``data.samples`` / ``data.photos`` are bundled pictures that may be trained on and there
is at least one training picture (``dzsr.sample.sample_data_problems``). What depends on the launch
or on files is checked when the run starts, each as one error: ``train.batch_size`` divisible by
the DDP processes (``check_world_size``), the resume checkpoint (``check_resume``), the dataset
files and starting weights (read by the training code).

Resume (``resume_changes``): ``dzsr train --resume`` continues exactly only when everything that
shapes the networks, the data stream, the optimisation or the random draws is as trained. Keys
that may change on resume (``RESUME_SAFE``): ``name``, ``device`` (the run continues; on another
device results then agree only to floating-point rounding), ``data.workers`` (samples are a pure
function of (seed, epoch, index)), every ``init.*`` key (starting weights: the checkpoint replaces
them), ``train.epochs`` and ``train.stop_at`` (how far to train), and every ``log.*`` key (where
and how often to write; a new ``log.out_dir`` with ``--resume PATH`` forks the run into another
folder). Every other key breaks exact resumption and is refused when it differs: ``scale``,
``stage``, ``seed``, ``model.*``, all other ``data.*`` keys (including ``data.root``: the files
there cannot be checked, so a moved dataset is resumed through a link at its old path), and all
other ``train.*`` keys (``batch_size`` and ``iters_per_epoch`` fix the data order and epoch ends;
``lr``, ``kernel_lr_factor``, ``decay_every`` and ``gamma`` are stored in the optimiser and
scheduler states, so a new value would be silently ignored; ``loss``, ``sw``, ``sw_weights``,
``sw_precision`` define the objective). Values compare after normalisation (``5e-4`` ==
``"5e-4"`` == ``0.0005``; a key missing from an older checkpoint's config compares as its
default).

Why a plain table and not pydantic: the config stays the plain nested dict the training code,
the checkpoints (``extra.train_config``, loadable with ``weights_only``) and the overrides use; the
rules above (strings read as numbers, bools never integers, null sections, dotted keys in every
message, "did you mean", the resume classes) would each need a custom validator in pydantic, and
thirty-odd keys fit in one readable table.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .data.degrade import QUALITY_RANGE, SIGMA_RANGE
from .sample import sample_data_problems


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


REQUIRED = object()  # the default of a key that must be given


@dataclass(frozen=True)
class Field:
    """One config value. ``parse(value)`` returns it normalised or raises ``ValueError``;
    ``expected`` says in words what fits (for messages)."""

    expected: str
    parse: Callable[[object], object]
    default: object = REQUIRED
    resume_safe: bool = False


def _integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError
    return int(value)  # a str: ValueError unless it spells an integer


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    try:
        number = float(value)
    except OverflowError:
        raise ValueError from None
    if not math.isfinite(number):
        raise ValueError
    return number


def _checked(convert: Callable, test: Callable[[object], bool]) -> Callable:
    def parse(value):
        value = convert(value)
        if not test(value):
            raise ValueError
        return value

    return parse


def integer(low: int, high: int | None = None, **kw) -> Field:
    """An integer >= ``low`` (and <= ``high``)."""
    words = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    in_range = _checked(_integer, lambda v: low <= v and (high is None or v <= high))
    return Field(words, in_range, **kw)


def number(low: float, high: float | None = None, low_open: bool = False, **kw) -> Field:
    """A finite number > ``low`` (``low_open``) or >= ``low`` (and <= ``high``)."""
    if high is None:
        words = f"a number {'>' if low_open else '>='} {low}"
    else:
        words = f"a number in {'(' if low_open else '['}{low}, {high}]"
    return Field(
        words,
        _checked(
            _number, lambda v: (low < v if low_open else low <= v) and (high is None or v <= high)
        ),
        **kw,
    )


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def boolean(**kw) -> Field:
    """``true`` or ``false`` (a YAML boolean; strings and numbers are refused)."""
    return Field("true or false", _bool, **kw)


def _text(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError
    return value


def text(**kw) -> Field:
    """A non-empty string."""
    return Field("a non-empty string", _text, **kw)


def choice(*options: str | int, **kw) -> Field:
    """One of ``options``; int options (judged by the first) also match a string spelling one."""
    words = ", ".join(map(str, options[:-1])) + f" or {options[-1]}"
    convert = _integer if isinstance(options[0], int) else _text
    return Field(words, _checked(convert, lambda v: v in options), **kw)


def _names(value) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError
    return [_text(v) for v in value]


def names(**kw) -> Field:
    """A list of non-empty strings (null: empty)."""
    return Field("a list of names (or null for none)", _names, **kw)


def int_range(low: int, high: int, **kw) -> Field:
    """``[a, b]`` integers with ``low <= a <= b <= high``."""

    def parse(value) -> list[int]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError
        a, b = (_integer(v) for v in value)
        if not low <= a <= b <= high:
            raise ValueError
        return [a, b]

    return Field(f"[low, high] integers with {low} <= low <= high <= {high}", parse, **kw)


def nullable(field: Field) -> Field:
    """``field`` that also takes null (default null unless ``field`` has one)."""

    def parse(value):
        return None if value is None else field.parse(value)

    default = None if field.default is REQUIRED else field.default
    return Field(f"{field.expected} or null", parse, default, field.resume_safe)


SAFE = {"resume_safe": True}

SCHEMA: dict = {
    "name": text(default="train", **SAFE),
    "scale": choice(2, 3, 4),
    "stage": choice("kernel_gen", "joint"),
    "seed": integer(0, 2**31 - 1),
    "device": choice("auto", "cpu", "cuda", default="auto", **SAFE),
    "data": {
        "kind": choice("nikon", "camerafusion", "folder", "sample"),
        "root": nullable(text()),
        "split": text(default="train"),
        "samples": names(default=[]),
        "photos": names(default=[]),
        "photos_as": choice("capture", "frame", default="capture"),
        "synthetic": integer(0, default=0),
        "patch_size": integer(1),
        "noise_map": boolean(default=True),
        "channel_shuffle": boolean(default=False),
        "noise_sigma": nullable(int_range(0, 255, default=list(SIGMA_RANGE))),
        "jpeg_quality": nullable(int_range(1, 100, default=list(QUALITY_RANGE))),
        "workers": integer(0, default=0, **SAFE),
    },
    "model": {
        "drop_prob": number(0, 1),
        "paste_prob": number(0, 1),
    },
    "init": {
        "checkpoint": nullable(text(**SAFE)),
        "kernel_gen": nullable(text(**SAFE)),
        "extractor": nullable(text(**SAFE)),
        "bicubic": boolean(default=False, **SAFE),
    },
    "train": {
        "batch_size": integer(1),
        "epochs": integer(1, **SAFE),
        "iters_per_epoch": integer(1),
        "lr": number(0, low_open=True),
        "kernel_lr_factor": number(0, low_open=True),
        "decay_every": integer(1),
        "gamma": number(0, 1, low_open=True),
        "loss": choice("l1", "l1sw"),
        "sw": choice("global", "local", default="global"),
        "sw_weights": nullable(text()),
        "sw_precision": choice("float32", "bfloat16", default="float32"),
        "stop_at": nullable(integer(1, **SAFE)),
    },
    "log": {
        "out_dir": text(**SAFE),
        "checkpoint_every": integer(1, **SAFE),
        "keep_every": integer(0, default=0, **SAFE),
        "scalars_every": integer(1, **SAFE),
        "images_every": integer(1, **SAFE),
    },
}


def fields(schema: Mapping = SCHEMA, prefix: str = "") -> dict[str, Field]:
    """{dotted key: Field} of every value in ``schema``."""
    out = {}
    for name, entry in schema.items():
        if isinstance(entry, Mapping):
            out.update(fields(entry, f"{prefix}{name}."))
        else:
            out[prefix + name] = entry
    return out


FIELDS = fields()
RESUME_SAFE = tuple(k for k, f in FIELDS.items() if f.resume_safe)


def schema_entry(keys: list[str]) -> Field | Mapping:
    """The section or Field at ``keys``; ``ConfigError`` naming the first key that is not in the
    schema."""
    node: Field | Mapping = SCHEMA
    for depth, name in enumerate(keys):
        if not isinstance(node, Mapping):
            raise ConfigError(f"{'.'.join(keys[:depth])} is a value, not a section")
        if name not in node:
            raise ConfigError(unknown_key(keys[:depth], name, node))
        node = node[name]
    return node


def unknown_key(path: list[str], name: str, section: Mapping) -> str:
    """ "unknown key a.b (did you mean a.c?)", the suggestion a similar sibling or a key ``name``
    elsewhere."""
    dotted = ".".join([*path, str(name)])
    close = difflib.get_close_matches(str(name), list(section), n=1)
    if close:
        hint = ".".join([*path, close[0]])
    else:
        leaves = {k.rsplit(".", 1)[-1]: k for k in FIELDS}
        close = difflib.get_close_matches(str(name), list(leaves), n=1)
        hint = leaves[close[0]] if close else None
    if hint is None:
        return f"unknown key {dotted} (valid here: {', '.join(section)})"
    return f"unknown key {dotted} (did you mean {hint}?)"


def _check_section(raw, schema: Mapping, path: list[str], problems: list[tuple[str, str]]) -> dict:
    dotted = ".".join(path)
    if raw is None and path:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(
            (dotted, f"{dotted} must be a section (a mapping of {', '.join(schema)}), got {raw!r}")
        )
        return {}
    for name in raw:
        if name not in schema:
            problems.append((".".join([*path, str(name)]), unknown_key(path, name, schema)))
    out = {}
    for name, entry in schema.items():
        key = ".".join([*path, name])
        if isinstance(entry, Mapping):
            out[name] = _check_section(raw.get(name), entry, [*path, name], problems)
        elif name not in raw:
            if entry.default is REQUIRED:
                problems.append((key, f"missing key {key} ({entry.expected})"))
            else:
                out[name] = _copy(entry.default)
        else:
            try:
                out[name] = entry.parse(raw[name])
            except (ValueError, TypeError):
                problems.append((key, f"{key} must be {entry.expected}, got {raw[name]!r}"))
    return out


def _copy(value):
    return list(value) if isinstance(value, list) else value


ROOTED_KINDS = ("nikon", "camerafusion", "folder")  # the data.kind values that read data.root


def _cross_key_problems(config: dict) -> list[tuple[str, str]]:
    """[(dotted key, message)] for the conditions between keys (module docstring) of a config
    whose every key is valid."""
    data, problems = config["data"], []
    if data["kind"] in ROOTED_KINDS and data["root"] is None:
        problems.append(
            (
                "data.root",
                f"data.root is required for data.kind={data['kind']} "
                f"(e.g. data.root=/path/to/dataset)",
            )
        )
    if data["patch_size"] < config["scale"]:
        problems.append(
            (
                "data.patch_size",
                f"data.patch_size must be at least the scale "
                f"{config['scale']}, got {data['patch_size']}",
            )
        )
    if data["kind"] == "sample":
        problems += sample_data_problems(
            data["samples"], data["photos"], data["photos_as"], data["synthetic"], prefix="data."
        )
    return problems


def check_config(raw) -> tuple[dict, list[tuple[str, str]]]:
    """(the complete normalised config, [(dotted key, message) for each problem]) of a raw
    mapping; conditions between keys are checked once there is no other problem."""
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, Mapping):
        return {}, [("", f"a config must be a mapping, got {type(raw).__name__}")]
    config = _check_section(raw, SCHEMA, [], problems)
    return config, problems or _cross_key_problems(config)


def check_world_size(config: Mapping, world: int) -> None:
    """``ConfigError`` unless ``train.batch_size`` (the global batch) splits evenly over ``world``
    DDP processes."""
    batch = config["train"]["batch_size"]
    if batch % world:
        raise ConfigError(f"train.batch_size={batch} must be divisible by the {world} processes")


def validate_config(raw) -> dict:
    """The complete normalised config of ``raw``; ``ConfigError`` listing every problem otherwise.
    Idempotent: a validated config validates to itself."""
    config, problems = check_config(raw)
    if problems:
        raise ConfigError("; ".join(message for _, message in problems))
    return config


def _value_at(config, key: str, field: Field):
    node = config
    for name in key.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return None if field.default is REQUIRED else field.default
        node = node[name]
    try:
        return field.parse(node)
    except (ValueError, TypeError):
        return node


def resume_changes(trained: Mapping, config: Mapping) -> list[str]:
    """``"key: old -> new"`` for each resume-breaking key whose value differs between the config a
    checkpoint was ``trained`` with and ``config``."""
    changes = []
    for key, field in FIELDS.items():
        if not field.resume_safe:
            old, new = _value_at(trained, key, field), _value_at(config, key, field)
            if old != new:
                changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def check_resume(trained, config: Mapping, path) -> None:
    """``ConfigError`` unless ``config`` resumes a checkpoint (``path``, trained with ``trained``)
    exactly."""
    if not isinstance(trained, Mapping):
        raise ConfigError(f"{path} holds no training config, so an exact resume cannot be checked")
    changes = resume_changes(trained, config)
    if changes:
        raise ConfigError(
            f"cannot resume {path} exactly: {'; '.join(changes)} (as trained -> "
            f"now); keep these as trained or start a new run; keys that may change "
            f"on resume: {', '.join(RESUME_SAFE)}"
        )
