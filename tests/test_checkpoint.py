"""Converting the authors' checkpoints (every official key, both ways), our own checkpoint files
(.pt and .safetensors) and ``load_model``, which reads them all."""

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import dzsr.outputs
from dzsr.checkpoint import (
    REGULAR_MATRIX,
    CheckpointMismatchError,
    convert_official,
    demo_checkpoint_path,
    load_checkpoint,
    load_model,
    load_official,
    model_config,
    official_key_map,
    official_scale,
    read_checkpoint,
    save_checkpoint,
    save_inference_checkpoint,
    to_official,
)
from dzsr.cli import EXIT_ERROR, main
from dzsr.models import SelfDZSR

# Copy of shared/official/state_dict_shapes.json: every key and shape of the authors' networks.
SHAPES = json.loads(
    (Path(__file__).parent / "data" / "official_state_dict_shapes.json").read_text()
)
OFFICIAL_NAMES = {
    "restoration": "SelfRefSR_x{s}",
    "kernel_gen": "KernelGen_x{s}",
    "extractor": "ContrasExtractorSep",
}


def fake_official(name):
    """Random tensors for every key of the authors' network ``name`` (shapes from the official list)."""
    sd = {k: torch.randn(shape) for k, shape in SHAPES[name].items()}
    for k in sd:
        if k.endswith("regular_matrix"):
            sd[k] = REGULAR_MATRIX.clone()
    return sd


@pytest.mark.parametrize("scale", [4, 2])
@pytest.mark.parametrize("network", ["restoration", "kernel_gen", "extractor"])
def test_round_trip_of_every_official_key(scale, network):
    name = OFFICIAL_NAMES[network].format(s=scale)
    official = fake_official(name)
    model = SelfDZSR(scale)
    module = getattr(model, network)
    assert set(official_key_map(network, module)) | {
        k for k in official if k.endswith("regular_matrix")
    } == set(official)
    load_official(model, **{network: {"state_dict": official}})
    back = to_official(module.state_dict(), network, module)
    assert set(back) == set(official)
    for k, v in official.items():
        assert torch.equal(back[k], v), k


def test_loaded_weights_land_in_the_right_modules():
    official = fake_official("SelfRefSR_x4")
    model = load_official(SelfDZSR(4), restoration=official)
    r = model.restoration
    assert torch.equal(
        r.align[1].offsets.to_matrix.weight, official["ada2.transform_matrix_conv.weight"]
    )
    assert torch.equal(r.reference.warp.bias, official["deform_conv.bias"])
    assert torch.equal(r.reference.encoder.convs[3].weight, official["ref_extractor.2.4.weight"])
    assert torch.equal(r.blocks[15].modulation[2].weight, official["block15.mlp.1.weight"])
    assert torch.equal(r.predictor.body[8].weight, official["predictor.predictor.4.0.weight"])
    assert torch.equal(r.upsampler.convs[1].bias, official["up.1.0.bias"])


def test_official_file_with_module_prefix_loads_from_a_path(tmp_path):
    official = fake_official("KernelGen_x2")
    path = tmp_path / "KernelGen_model_401.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, path)
    model = load_official(SelfDZSR(2), kernel_gen=str(path))
    assert torch.equal(model.kernel_gen.guide[8].weight, official["guide_net.3.weight"])
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official(model, kernel_gen=str(tmp_path / "nope.pth"))


def test_strict_conversion_lists_missing_unexpected_and_misshaped_keys():
    official = fake_official("SelfRefSR_x4")
    del official["block3.res.0.weight"]
    official["extra.weight"] = torch.zeros(1)
    official["head.1.weight"] = torch.zeros(64, 3, 5, 5)
    model = SelfDZSR(4)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_official(official, "restoration", model.restoration)
    msg = str(err.value)
    assert "missing keys (1): block3.res.0.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "head.1.weight (got (64, 3, 5, 5), expected (64, 3, 3, 3))" in msg
    official["head.1.weight"] = torch.zeros(64, 3, 3, 3)
    partial = convert_official(official, "restoration", model.restoration, strict=False)
    assert (
        "blocks.3.conv1.weight" not in partial
        and len(partial) == len(model.restoration.state_dict()) - 1
    )


def test_wrong_regular_matrix_and_wrong_scale_are_rejected():
    official = fake_official("SelfRefSR_x4")
    official["ada1.regular_matrix"] = official["ada1.regular_matrix"].flip(1)
    with pytest.raises(
        CheckpointMismatchError, match="ada1.regular_matrix must be the 3x3 tap grid"
    ):
        load_official(SelfDZSR(4), restoration=official)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys .*up.1.0.weight"):
        load_official(SelfDZSR(2), restoration=fake_official("SelfRefSR_x4"))


def test_save_and_load_our_checkpoint(tmp_path):
    model = SelfDZSR(2, drop_prob=0.2, paste_prob=0.4)
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(path, model, extra={"iteration": 7})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary files left behind
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"scale": 2, "drop_prob": 0.2, "paste_prob": 0.4}
    assert ckpt["extra"] == {"iteration": 7} and ckpt["version"] == 1 and ckpt["dzsr_version"]
    assert (
        loaded.restoration.align[0].drop_prob == 0.2
        and loaded.restoration.reference.paste_prob == 0.4
    )
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, SelfDZSR(2), extra={"iteration": 1})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, SelfDZSR(2), extra={"iteration": 2})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_load_checkpoint_rejects_foreign_and_mismatched_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a dzsr checkpoint"):
        load_checkpoint(foreign)
    ours = tmp_path / "x4.pt"
    save_checkpoint(ours, SelfDZSR(4))
    with pytest.raises(
        CheckpointMismatchError, match="unexpected keys .*restoration.upsampler.convs.1.weight"
    ):
        load_checkpoint(ours, SelfDZSR(2))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def _save_authors(model, folder):
    """``model``'s restoration and extractor as the authors' files (their key names, torch.save)."""
    for network, name in (
        ("restoration", "RefSR_model_401.pth"),
        ("extractor", "Student_model_400.pth"),
    ):
        module = getattr(model, network)
        torch.save({"state_dict": to_official(module.state_dict(), network, module)}, folder / name)


def test_checkpoints_ours_inference_only_and_authors(tmp_path):
    model = SelfDZSR(2).eval()
    save_checkpoint(tmp_path / "full.pt", model)
    assert load_model(tmp_path / "full.pt").scale == 2
    with pytest.raises(ValueError, match="scale x2, not x4"):
        load_model(tmp_path / "full.pt", scale=4)

    save_inference_checkpoint(tmp_path / "slim.pt", model)
    slim = load_model(tmp_path / "slim.pt")
    for k, v in slim.restoration.state_dict().items():
        torch.testing.assert_close(v, model.restoration.state_dict()[k].half().float())

    _save_authors(model, tmp_path)
    authors = load_model(tmp_path / "RefSR_model_401.pth", 2, tmp_path / "Student_model_400.pth")
    for k, v in authors.restoration.state_dict().items():
        assert torch.equal(v, model.restoration.state_dict()[k])
    with pytest.raises(ValueError, match="Student"):
        load_model(tmp_path / "RefSR_model_401.pth")
    with pytest.raises(ValueError, match="scale x2, not x4"):
        load_model(tmp_path / "RefSR_model_401.pth", 4, tmp_path / "Student_model_400.pth")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- safetensors


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if k.startswith(prefix):
            assert torch.equal(v, sb[k]), k


def test_safetensors_round_trip_with_the_config_in_its_metadata(tmp_path):
    model = SelfDZSR(2, drop_prob=0.2, paste_prob=0.4)
    path = tmp_path / "run" / "model.safetensors"
    save_checkpoint(path, model, extra={"iteration": 7})
    assert sorted(os.listdir(path.parent)) == ["model.safetensors"]  # no temporary file left
    with safetensors.safe_open(path, framework="pt") as f:  # a plain safetensors file
        meta, keys = f.metadata(), set(f.keys())
    assert keys == set(model.state_dict())
    assert meta["format"] == "dzsr-checkpoint" and meta["version"] == "1"
    assert (
        json.loads(meta["config"])
        == model_config(model)
        == {"scale": 2, "drop_prob": 0.2, "paste_prob": 0.4}
    )
    assert json.loads(meta["extra"]) == {"iteration": 7} and meta["torch_version"]
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"] == model_config(model) and ckpt["extra"] == {"iteration": 7}
    assert loaded.restoration.reference.paste_prob == 0.4
    _equal_weights(model, loaded)


def test_inference_checkpoints_in_both_containers_load_alike(tmp_path):
    torch.manual_seed(1)
    model = SelfDZSR(4).eval()
    save_inference_checkpoint(tmp_path / "slim.safetensors", model, extra={"iteration": 3})
    save_inference_checkpoint(tmp_path / "slim.pt", model, extra={"iteration": 3})
    with safetensors.safe_open(tmp_path / "slim.safetensors", framework="pt") as f:
        assert not any(k.startswith("kernel_gen.") for k in f.keys())
        assert f.get_tensor("restoration.head.weight").dtype == torch.float16
        assert json.loads(f.metadata()["extra"]) == {
            "iteration": 3,
            "inference_only": True,
            "half": True,
        }
    a, b = load_model(tmp_path / "slim.safetensors"), load_model(tmp_path / "slim.pt")
    assert a.scale == 4 and not a.training
    for prefix in ("restoration.", "extractor."):
        _equal_weights(a, b, prefix)
    for k, v in a.restoration.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, model.restoration.state_dict()[k].half().float())
    full = tmp_path / "full.safetensors"
    save_inference_checkpoint(full, model, half=False)
    _equal_weights(model.restoration, load_model(full).restoration)


def test_the_shipped_demo_checkpoint_is_safetensors_with_its_config():
    path = demo_checkpoint_path()
    assert path.endswith("demo_x4.safetensors")
    with safetensors.safe_open(path, framework="pt") as f:
        assert json.loads(f.metadata()["config"])["scale"] == 4
    assert load_model().scale == 4 and load_model(path, scale=4).scale == 4


def _safetensors_bytes(metadata=None) -> bytes:
    return safetensors.torch.save({"restoration.head.weight": torch.zeros(64, 3, 3, 3)}, metadata)


BAD_SAFETENSORS = {
    "no_metadata": (lambda: _safetensors_bytes(), "no format entry"),
    "foreign_format": (lambda: _safetensors_bytes({"format": "pt"}), "format 'pt'"),
    "config_not_json": (
        lambda: _safetensors_bytes(
            {"format": "dzsr-checkpoint", "version": "1", "config": "{scale: 4"}
        ),
        "metadata config is not JSON",
    ),
    "no_config": (
        lambda: _safetensors_bytes({"format": "dzsr-checkpoint", "version": "1"}),
        "config must hold scale",
    ),
    "wrong_scale": (
        lambda: _safetensors_bytes(
            {"format": "dzsr-checkpoint", "version": "1", "config": '{"scale": 5}'}
        ),
        "config must hold scale",
    ),
    "future_version": (
        lambda: _safetensors_bytes(
            {"format": "dzsr-checkpoint", "version": "9", "config": '{"scale": 4}'}
        ),
        "version 9",
    ),
    "missing_weights": (
        lambda: _safetensors_bytes(
            {"format": "dzsr-checkpoint", "version": "1", "config": '{"scale": 4}'}
        ),
        "missing keys",
    ),
    "truncated": (
        lambda: _safetensors_bytes({"format": "dzsr-checkpoint"})[:-100],
        "truncated or damaged safetensors",
    ),
    "random": (lambda: np.random.default_rng(3).bytes(3000), "not a PyTorch or safetensors"),
    "empty": (lambda: b"", "empty (0 bytes)"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_a_bad_safetensors_file_is_one_clear_error_naming_it(tmp_path, case):
    make, fragment = BAD_SAFETENSORS[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(make())
    with pytest.raises(ValueError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and fragment in msg and "\n" not in msg, msg
    with pytest.raises((ValueError, CheckpointMismatchError), match=path.name):
        load_checkpoint(path)


def test_training_state_cannot_go_into_safetensors_and_nothing_is_written(tmp_path):
    model = SelfDZSR(2)
    head = model.restoration.head.weight
    optimiser = torch.optim.Adam([head])
    head.grad = torch.ones_like(head)
    optimiser.step()  # state: tensors (exp_avg, exp_avg_sq, step)
    with pytest.raises(ValueError, match=r"model\.safetensors.*extra.*needs a \.pt file"):
        save_checkpoint(
            tmp_path / "model.safetensors", model, extra={"optimizer": optimiser.state_dict()}
        )
    assert os.listdir(tmp_path) == []
    save_checkpoint(tmp_path / "model.pt", model, extra={"optimizer": optimiser.state_dict()})
    assert read_checkpoint(tmp_path / "model.pt")["extra"]["optimizer"]["state"]


def test_a_failed_safetensors_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "slim.safetensors"
    save_inference_checkpoint(path, SelfDZSR(2))
    before = path.read_bytes()

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(fd):
        os.close(fd)
        return FullDisk()

    monkeypatch.setattr(dzsr.outputs, "_open", full_disk)
    with pytest.raises(OSError, match="cannot write .*slim.safetensors: no space left on device"):
        save_inference_checkpoint(path, SelfDZSR(2))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["slim.safetensors"]


def test_official_scale_from_the_upsampler():
    for scale in (2, 3, 4):
        restoration = SelfDZSR(scale).restoration
        sd = to_official(restoration.state_dict(), "restoration", restoration)
        assert official_scale(sd) == scale
    with pytest.raises(ValueError, match="up.0.0.weight"):
        official_scale({"head.1.weight": torch.zeros(1)})


def test_dzsr_convert_turns_the_authors_files_into_safetensors(tmp_path, capsys):
    torch.manual_seed(2)
    model = SelfDZSR(2)
    _save_authors(model, tmp_path)
    authors = [
        "--ckpt",
        str(tmp_path / "RefSR_model_401.pth"),
        "--extractor",
        str(tmp_path / "Student_model_400.pth"),
    ]
    out = tmp_path / "x2.safetensors"
    assert main(["convert", *authors, "--out", str(out)]) == 0
    assert f"wrote {out} (x2, float32)" in capsys.readouterr().out
    converted = load_model(out, scale=2)
    for prefix in ("restoration.", "extractor."):
        _equal_weights(model, converted, prefix)
    half = tmp_path / "x2_half.pt"  # and back out of ours, halved, into the other container
    assert main(["convert", "--ckpt", str(out), "--out", str(half), "--half"]) == 0
    assert read_checkpoint(half)["state_dict"]["restoration.head.weight"].dtype == torch.float16
    os.link(tmp_path / "RefSR_model_401.pth", tmp_path / "refsr.pt")
    before = (tmp_path / "refsr.pt").read_bytes()
    assert main(["convert", *authors, "--out", str(tmp_path / "refsr.pt")]) == EXIT_ERROR
    assert "is the input file" in capsys.readouterr().err
    assert (tmp_path / "refsr.pt").read_bytes() == before
