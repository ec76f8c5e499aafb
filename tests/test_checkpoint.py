"""Converting the authors' checkpoints (every official key, both ways) and our own checkpoint files."""
import json
import os
from pathlib import Path

import pytest
import torch

from dzsr.checkpoint import (REGULAR_MATRIX, CheckpointMismatchError, convert_official, load_checkpoint,
                             load_official, official_key_map, save_checkpoint, to_official)
from dzsr.models import SelfDZSR

# Copy of shared/official/state_dict_shapes.json: every key and shape of the authors' networks.
SHAPES = json.loads((Path(__file__).parent / "data" / "official_state_dict_shapes.json").read_text())
OFFICIAL_NAMES = {"restoration": "SelfRefSR_x{s}", "kernel_gen": "KernelGen_x{s}", "extractor": "ContrasExtractorSep"}


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
    assert set(official_key_map(network, module)) | {k for k in official if k.endswith("regular_matrix")} == set(official)
    load_official(model, **{network: {"state_dict": official}})
    back = to_official(module.state_dict(), network, module)
    assert set(back) == set(official)
    for k, v in official.items():
        assert torch.equal(back[k], v), k


def test_loaded_weights_land_in_the_right_modules():
    official = fake_official("SelfRefSR_x4")
    model = load_official(SelfDZSR(4), restoration=official)
    r = model.restoration
    assert torch.equal(r.align[1].offsets.to_matrix.weight, official["ada2.transform_matrix_conv.weight"])
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
    assert "blocks.3.conv1.weight" not in partial and len(partial) == len(model.restoration.state_dict()) - 1


def test_wrong_regular_matrix_and_wrong_scale_are_rejected():
    official = fake_official("SelfRefSR_x4")
    official["ada1.regular_matrix"] = official["ada1.regular_matrix"].flip(1)
    with pytest.raises(CheckpointMismatchError, match="ada1.regular_matrix must be the 3x3 tap grid"):
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
    assert loaded.restoration.align[0].drop_prob == 0.2 and loaded.restoration.reference.paste_prob == 0.4
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
    with pytest.raises(CheckpointMismatchError, match="unexpected keys .*restoration.upsampler.convs.1.weight"):
        load_checkpoint(ours, SelfDZSR(2))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
