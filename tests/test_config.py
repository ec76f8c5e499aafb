"""Training configs are validated once, at load: the schema, its errors, overrides, and the resume check."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import dzsr.config_schema as schema
from dzsr.cli import EXIT_ERROR, main
from dzsr.config import PRESETS, ConfigError, load_config, preset_path
from dzsr.config_schema import (
    FIELDS,
    RESUME_SAFE,
    check_config,
    check_resume,
    resume_changes,
    validate_config,
)

DELETE = object()  # remove the key from the file
ROOT = ["data.root=/data/DRealSR"]  # the dataset presets name no data.root: the user gives it


def _load_preset(name: str, overrides=()) -> dict:
    """``load_config(name)`` with the data.root a dataset preset needs."""
    return load_config(name, [*([] if name == "sample_x4" else ROOT), *overrides])


@functools.lru_cache
def _read_preset(name: str) -> dict:
    with open(preset_path(name)) as f:
        return yaml.safe_load(f)


def _preset(name: str = "sample_x4") -> dict:
    """A fresh copy of the preset as YAML reads it (before validation)."""
    return copy.deepcopy(_read_preset(name))


def _set(raw: dict, key: str, value) -> dict:
    *path, leaf = key.split(".")
    node = raw
    for k in path:
        node = node.setdefault(k, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def _write(tmp_path, raw, name="run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return str(path)


def _load_with(tmp_path, key, value, overrides=()):
    return load_config(_write(tmp_path, _set(_preset(), key, value)), list(overrides))


# ----------------------------------------------------------------------------- valid configs


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_complete_and_validates_to_itself(name):
    config = _load_preset(name)
    assert set(schema.fields(config)) == set(FIELDS)  # every key present, defaults filled
    assert validate_config(config) == config
    raw = _preset(name)
    for key in schema.fields(raw):
        assert key in FIELDS, f"{name}.yaml has {key}, not in the schema"


def test_defaults_are_valid_values_of_their_own_fields():
    for key, field in FIELDS.items():
        if field.default is not schema.REQUIRED:
            assert field.parse(field.default) == field.default, key


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("train.lr", "5e-4", 5e-4),  # YAML 1.1 reads 5e-4 as a string
        ("train.lr", "1.0E-3", 1e-3),
        ("train.lr", 1, 1.0),
        ("train.gamma", 1, 1.0),
        ("train.batch_size", "16", 16),
        ("scale", "2", 2),
        ("model.drop_prob", 0, 0.0),
        ("model.paste_prob", "1", 1.0),
        ("seed", 0, 0),
        ("data.noise_sigma", None, None),
        ("data.noise_sigma", [0, 255], [0, 255]),
        ("data.jpeg_quality", [1, 100], [1, 100]),
        ("data.jpeg_quality", ["60", 95], [60, 95]),
        ("data.photos", ["camera.png"], ["camera.png"]),
        ("data.samples", None, []),
        ("train.stop_at", None, None),
        ("log.keep_every", 0, 0),
        ("device", "cpu", "cpu"),
        ("init.checkpoint", None, None),
        ("init.bicubic", False, False),
    ],
)
def test_accepted_values_are_normalised(tmp_path, key, value, expected):
    config = _load_with(tmp_path, key, value)
    got = config
    for k in key.split("."):
        got = got[k]
    assert got == expected and type(got) is type(expected)


def test_a_yaml_file_with_an_unquoted_5e_4_gives_a_float(tmp_path):
    text = open(preset_path("sample_x4")).read().replace("lr: 5.0e-4", "lr: 5e-4")
    assert "lr: 5e-4" in text and isinstance(yaml.safe_load(text)["train"]["lr"], str)
    assert load_config(_write(tmp_path, text))["train"]["lr"] == 5e-4


def test_optional_keys_and_sections_take_their_defaults(tmp_path):
    raw = _preset("nikon_x4")
    raw["data"]["root"] = "/data/DRealSR"
    del raw["device"], raw["name"], raw["data"]["workers"], raw["log"]["keep_every"]
    raw["init"] = None  # a section with everything under it commented out
    config = load_config(_write(tmp_path, raw))
    assert (
        config["device"],
        config["name"],
        config["data"]["workers"],
        config["log"]["keep_every"],
    ) == ("auto", "train", 0, 0)
    assert config["init"] == {
        "checkpoint": None,
        "kernel_gen": None,
        "extractor": None,
        "bicubic": False,
    }
    assert config["data"]["channel_shuffle"] is False and config["data"]["noise_sigma"] == [5, 30]


# ----------------------------------------------------------------------------- one error naming the key

BAD = [
    # unknown keys at every level, with the closest valid key
    ("sed", 0, "unknown key sed (did you mean seed?)"),
    ("data.kinds", "sample", "unknown key data.kinds (did you mean data.kind?)"),
    ("model.drop", 0.3, "unknown key model.drop (did you mean model.drop_prob?)"),
    ("init.bicubik", True, "unknown key init.bicubik (did you mean init.bicubic?)"),
    ("train.lrr", 1e-4, "unknown key train.lrr (did you mean train.lr?)"),
    (
        "log.checkpoint_evry",
        5,
        "unknown key log.checkpoint_evry (did you mean log.checkpoint_every?)",
    ),
    ("lr", 1e-4, "unknown key lr (did you mean train.lr?)"),  # in the wrong section
    ("train.out_dir", "x", "unknown key train.out_dir (did you mean log.out_dir?)"),
    (
        "qqqq",
        1,
        "unknown key qqqq (valid here: name, scale, stage, seed, device, data, model, init, train, log)",
    ),
    # wrong types
    ("train.lr", "abc", "train.lr must be a number > 0, got 'abc'"),
    ("train.lr", "5e-4x", "train.lr must be a number > 0, got '5e-4x'"),
    ("train.lr", True, "train.lr must be a number > 0, got True"),  # bool is not a number
    ("train.lr", {"a": 1}, "train.lr must be a number > 0, got {'a': 1}"),
    ("train.batch_size", 16.0, "train.batch_size must be an integer >= 1, got 16.0"),
    ("train.batch_size", "16.5", "train.batch_size must be an integer >= 1, got '16.5'"),
    (
        "train.batch_size",
        True,
        "train.batch_size must be an integer >= 1, got True",
    ),  # bool is not an int
    ("init.bicubic", 1, "init.bicubic must be true or false, got 1"),  # int is not a bool
    ("data.noise_map", "yes please", "data.noise_map must be true or false, got 'yes please'"),
    ("log.out_dir", 5, "log.out_dir must be a non-empty string, got 5"),
    (
        "data.photos",
        "camera.png",
        "data.photos must be a list of names (or null for none), got 'camera.png'",
    ),
    (
        "data.photos",
        ["camera.png", 3],
        "data.photos must be a list of names (or null for none), got ['camera.png', 3]",
    ),
    (
        "data.noise_sigma",
        [5],
        "data.noise_sigma must be [low, high] integers with 0 <= low <= high <= 255 or null, "
        "got [5]",
    ),
    (
        "data.noise_sigma",
        [5.5, 30],
        "data.noise_sigma must be [low, high] integers with 0 <= low <= high <= 255 "
        "or null, got [5.5, 30]",
    ),
    ("model", 5, "model must be a section (a mapping of drop_prob, paste_prob), got 5"),
    # out of range
    ("train.batch_size", 0, "train.batch_size must be an integer >= 1, got 0"),
    ("log.checkpoint_every", 0, "log.checkpoint_every must be an integer >= 1, got 0"),
    ("train.lr", 0, "train.lr must be a number > 0, got 0"),
    ("train.lr", -1e-4, "train.lr must be a number > 0, got -0.0001"),
    ("train.lr", "nan", "train.lr must be a number > 0, got 'nan'"),
    ("train.lr", float("nan"), "train.lr must be a number > 0, got nan"),
    ("train.lr", float("inf"), "train.lr must be a number > 0, got inf"),
    ("train.kernel_lr_factor", 0.0, "train.kernel_lr_factor must be a number > 0, got 0.0"),
    ("model.drop_prob", 1.5, "model.drop_prob must be a number in [0, 1], got 1.5"),
    ("model.paste_prob", -0.1, "model.paste_prob must be a number in [0, 1], got -0.1"),
    ("train.gamma", 0, "train.gamma must be a number in (0, 1], got 0"),
    ("train.epochs", 0, "train.epochs must be an integer >= 1, got 0"),
    ("train.iters_per_epoch", -1, "train.iters_per_epoch must be an integer >= 1, got -1"),
    ("train.decay_every", 0, "train.decay_every must be an integer >= 1, got 0"),
    ("train.stop_at", 0, "train.stop_at must be an integer >= 1 or null, got 0"),
    ("seed", -1, "seed must be an integer in [0, 2147483647], got -1"),
    ("data.workers", -1, "data.workers must be an integer >= 0, got -1"),
    ("data.synthetic", -2, "data.synthetic must be an integer >= 0, got -2"),
    ("log.keep_every", -5, "log.keep_every must be an integer >= 0, got -5"),
    (
        "data.noise_sigma",
        [30, 5],
        "data.noise_sigma must be [low, high] integers with 0 <= low <= high <= 255 or null, "
        "got [30, 5]",
    ),
    (
        "data.jpeg_quality",
        [0, 95],
        "data.jpeg_quality must be [low, high] integers with 1 <= low <= high <= 100 "
        "or null, got [0, 95]",
    ),
    # not one of the choices
    (
        "data.kind",
        "nikkon",
        "data.kind must be nikon, camerafusion, folder or sample, got 'nikkon'",
    ),
    ("stage", "train", "stage must be kernel_gen or joint, got 'train'"),
    ("scale", 5, "scale must be 2, 3 or 4, got 5"),
    ("device", "gpu", "device must be auto, cpu or cuda, got 'gpu'"),
    ("train.loss", "l2", "train.loss must be l1 or l1sw, got 'l2'"),
    ("train.sw_precision", "half", "train.sw_precision must be float32 or bfloat16, got 'half'"),
    ("train.sw", "locale", "train.sw must be global or local, got 'locale'"),
    ("data.photos_as", "tiles", "data.photos_as must be capture or frame, got 'tiles'"),
    # null (or empty) where a value is needed
    ("train.lr", None, "train.lr must be a number > 0, got None"),
    ("train.batch_size", None, "train.batch_size must be an integer >= 1, got None"),
    ("data.kind", None, "data.kind must be nikon, camerafusion, folder or sample, got None"),
    ("log.out_dir", None, "log.out_dir must be a non-empty string, got None"),
    ("init.bicubic", None, "init.bicubic must be true or false, got None"),
    ("name", "", "name must be a non-empty string, got ''"),
    # missing required keys
    ("train.lr", DELETE, "missing key train.lr (a number > 0)"),
    ("model.drop_prob", DELETE, "missing key model.drop_prob (a number in [0, 1])"),
    # conditions between keys
    (
        "data.kind",
        "folder",
        "data.root is required for data.kind=folder (e.g. data.root=/path/to/dataset)",
    ),
    ("data.patch_size", 3, "data.patch_size must be at least the scale 4, got 3"),
    (
        "data.samples",
        ["astronaut"],
        "data.samples: not for training: astronaut (a held-out photograph)",
    ),
    (
        "data.photos",
        ["coffee.png", "camera.png"],
        "data.photos: not for training: coffee.png (a held-out or demo photograph)",
    ),
    (
        "data.photos",
        ["nope.png"],
        "data.photos: not for training: nope.png (not among scikit-image's bundled photographs)",
    ),
    ("data.photos", [], "no training images: give data.samples, data.photos or data.synthetic"),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_value_in_the_file_is_one_error_naming_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as err:
        _load_with(tmp_path, key, value)
    path = str(tmp_path / "run.yaml")
    assert str(err.value) == f"config {path}: {message}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "override 'train.lrr=1': unknown key train.lrr (did you mean train.lr?)"),
        ("trian.lr=1", "override 'trian.lr=1': unknown key trian (did you mean train?)"),
        ("train.lr.x=1", "override 'train.lr.x=1': train.lr is a value, not a section"),
        (
            "train.batch_size=0",
            "override 'train.batch_size=0': train.batch_size must be an integer >= 1, got 0",
        ),
        ("train.lr=five", "override 'train.lr=five': train.lr must be a number > 0, got 'five'"),
        (
            "init.bicubic=yes please",
            "override 'init.bicubic=yes please': init.bicubic must be true or false, "
            "got 'yes please'",
        ),
        (
            "log={out_dir: x}",
            "override 'log={out_dir: x}': missing key log.checkpoint_every (an integer >= 1)",
        ),
        ("train.lr", "override 'train.lr' must look like key.subkey=value"),
        ("train..lr=1", "override 'train..lr=1' has an empty key"),
    ],
)
def test_override_errors_name_the_override(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("sample_x4", [override])
    assert str(err.value).startswith(message), str(err.value)


def test_overrides_reach_keys_absent_from_the_file_and_may_fix_it(tmp_path):
    assert "channel_shuffle" not in _preset("nikon_x4")["data"]
    shuffled = _load_preset("nikon_x4", ["data.channel_shuffle=true"])
    assert shuffled["data"]["channel_shuffle"] is True
    path = _write(tmp_path, _set(_preset(), "train.batch_size", 0))
    assert load_config(path, ["train.batch_size=4"])["train"]["batch_size"] == 4
    assert (
        load_config("sample_x4", ["train.lr=3e-4"])["train"]["lr"] == 3e-4
    )  # the override string "3e-4"


def test_every_problem_is_listed_in_one_error(tmp_path):
    raw = _set(_set(_preset(), "train.batch_size", 0), "log.chekpoint_every", 5)
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, raw), ["train.lr=abc"])
    msg = str(err.value)
    assert "\n" not in msg and msg.count("; ") == 2
    for part in (
        "train.batch_size must be an integer >= 1, got 0",
        "unknown key log.chekpoint_every",
        "override 'train.lr=abc': train.lr must be a number > 0",
    ):
        assert part in msg, (part, msg)


def test_conditions_between_keys_wait_for_every_key_to_be_valid(tmp_path):
    """A data.kind that needs a data.root is not reported while another key is wrong."""
    raw = _set(_set(_preset(), "data.kind", "folder"), "train.batch_size", 0)
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, raw))
    assert str(err.value).endswith("train.batch_size must be an integer >= 1, got 0")
    with pytest.raises(ConfigError, match="data.root is required for data.kind=folder"):
        load_config(_write(tmp_path, raw), ["train.batch_size=4"])
    fixed = load_config(_write(tmp_path, raw), ["train.batch_size=4", "data.root=/d"])
    assert fixed["data"]["root"] == "/d"


def test_the_global_batch_must_split_over_the_processes():
    config = load_config("sample_x4", ["train.batch_size=6"])
    schema.check_world_size(config, 3)
    with pytest.raises(
        ConfigError,
        match=r"^train.batch_size=6 must be divisible by the 4 "
        r"processes$",
    ):
        schema.check_world_size(config, 4)


def test_a_misspelt_section_is_named_with_the_section_it_meant(tmp_path):
    raw = _preset()
    raw["trian"] = raw.pop("train")
    with pytest.raises(
        ConfigError, match=r"unknown key trian \(did you mean train\?\).*missing key train.lr"
    ):
        load_config(_write(tmp_path, raw))


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="must be a YAML mapping, got list"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="must be a mapping, got str"):
        validate_config("train")


_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=6)
    | st.sampled_from(["5e-4", "16", "l1", "joint", "cpu", "frame"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(
    max_examples=5 * settings().max_examples
)  # cheap examples: five times the profile's count
@given(key=st.sampled_from(sorted(FIELDS)), value=_ANY)
def test_fuzz_any_value_is_accepted_normalised_or_one_problem_naming_its_key(key, value):
    """Never an exception other than the listed problem: a value either validates (and the result
    validates to itself) or gives exactly one problem, whose message names that key (a condition
    between keys, such as no training pictures left, names every key it involves)."""
    config, problems = check_config(_set(_preset(), key, value))
    if problems:
        assert len(problems) == 1 and key in problems[0][1], problems
    else:
        assert validate_config(config) == config


def test_the_docstring_documents_every_resume_safe_key():
    doc = schema.__doc__
    for key in RESUME_SAFE:
        section = key.split(".")[0]
        assert f"``{key}``" in doc or f"``{section}.*``" in doc, key


# ----------------------------------------------------------------------------- resume compatibility


def test_resume_changes_name_each_breaking_key_with_old_and_new_values():
    trained = load_config("sample_x4")
    now = load_config(
        "sample_x4",
        [
            "train.batch_size=4",
            "seed=1",
            "data.photos=[camera.png]",
            "scale=2",
            "train.lr=1e-3",
            "model.drop_prob=0.5",
            "train.loss=l1sw",
        ],
    )
    changes = resume_changes(trained, now)
    assert changes == [
        "scale: 4 -> 2",
        "seed: 0 -> 1",
        f"data.photos: {trained['data']['photos']!r} -> ['camera.png']",
        "model.drop_prob: 0.3 -> 0.5",
        "train.batch_size: 8 -> 4",
        "train.lr: 0.0005 -> 0.001",
        "train.loss: 'l1' -> 'l1sw'",
    ]
    with pytest.raises(ConfigError) as err:
        check_resume(trained, now, "runs/x/last.pt")
    msg = str(err.value)
    assert msg.startswith("cannot resume runs/x/last.pt exactly: scale: 4 -> 2; seed: 0 -> 1")
    assert msg.endswith("keys that may change on resume: " + ", ".join(RESUME_SAFE))


def test_resume_allows_safe_keys_and_equal_values_written_differently():
    trained = load_config("sample_x4")
    now = load_config(
        "sample_x4",
        [
            "log.out_dir=elsewhere",
            "train.epochs=20",
            "train.stop_at=5",
            "device=cpu",
            "init.bicubic=false",
            "data.workers=2",
            "log.scalars_every=1",
            "name=more",
            "train.lr='5e-4'",
            "train.gamma=0.5",
        ],
    )
    assert resume_changes(trained, now) == []
    check_resume(trained, now, "last.pt")
    assert set(RESUME_SAFE) == {
        "name",
        "device",
        "data.workers",
        "init.checkpoint",
        "init.kernel_gen",
        "init.extractor",
        "init.bicubic",
        "train.epochs",
        "train.stop_at",
        "log.out_dir",
        "log.checkpoint_every",
        "log.keep_every",
        "log.scalars_every",
        "log.images_every",
    }


def test_resume_compares_keys_missing_from_an_older_checkpoint_as_their_defaults():
    trained = _load_preset("nikon_x4")
    del trained["data"]["channel_shuffle"], trained["data"]["photos_as"]
    assert resume_changes(trained, _load_preset("nikon_x4")) == []
    assert resume_changes(trained, _load_preset("nikon_x4", ["data.channel_shuffle=true"])) == [
        "data.channel_shuffle: False -> True"
    ]
    with pytest.raises(ConfigError, match="holds no training config"):
        check_resume(None, _load_preset("nikon_x4"), "old.pt")


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("train.lr", "5e-4x", "train.lr must be a number > 0, got '5e-4x'"),
        ("train.batch_size", 0, "train.batch_size must be an integer >= 1, got 0"),
        ("log.checkpoint_every", 0, "log.checkpoint_every must be an integer >= 1, got 0"),
        ("data.noise_mapp", False, "unknown key data.noise_mapp (did you mean data.noise_map?)"),
    ],
)
def test_cli_train_with_a_bad_config_is_one_error_line(tmp_path, capsys, key, value, fragment):
    path = _write(tmp_path, _set(_set(_preset(), key, value), "log.out_dir", str(tmp_path / "out")))
    assert main(["train", "--config", path]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == f"dzsr train: error: config {path}: {fragment}\n"
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_train_bad_config_subprocess_exit_status_and_no_traceback(tmp_path):
    path = _write(tmp_path, _set(_preset(), "train.batch_size", 0))
    proc = subprocess.run(
        [sys.executable, "-m", "dzsr.cli", "train", "--config", path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_ERROR and proc.stdout == ""
    assert (
        proc.stderr
        == f"dzsr train: error: config {path}: train.batch_size must be an integer >= 1, got 0\n"
    )
