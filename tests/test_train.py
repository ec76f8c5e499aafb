"""Training: configs and overrides, the training state and exact resume, the degradation stage,
TensorBoard, DDP on gloo."""

from __future__ import annotations

import glob
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dzsr.checkpoint import load_checkpoint
from dzsr.config import PRESETS, ConfigError, load_config
from dzsr.train import train
from dzsr.train_parts import EpochBatches


def _tiny(out_dir, *extra):
    """The sample preset shrunk to seconds: two photographs, batch 2, 24px patches, 2 iterations
    per epoch."""
    return load_config(
        "sample_x4",
        [
            f"log.out_dir={out_dir}",
            "data.photos=[camera.png, ihc.png]",
            "data.patch_size=24",
            "train.batch_size=2",
            "train.iters_per_epoch=2",
            "train.epochs=2",
            "train.decay_every=1",
            "log.checkpoint_every=1",
            "log.scalars_every=1",
            "log.images_every=2",
            *extra,
        ],
    )


def _weights(path):
    model, ckpt = load_checkpoint(path)
    return model.state_dict(), ckpt


def test_presets_load_with_the_paper_settings():
    root = ["data.root=/data"]
    for name in PRESETS:
        c = load_config(name, root if name != "sample_x4" else [])
        assert c["stage"] in ("joint", "kernel_gen")
    nikon, fusion = load_config("nikon_x4", root), load_config("camerafusion_x2", root)
    for c, scale, drop in ((nikon, 4, 0.3), (fusion, 2, 0.45)):
        t = c["train"]
        assert (c["scale"], c["model"]["drop_prob"], c["data"]["patch_size"]) == (scale, drop, 48)
        assert (
            t["batch_size"],
            t["epochs"],
            t["iters_per_epoch"],
            t["lr"],
            t["kernel_lr_factor"],
            t["decay_every"],
            t["gamma"],
        ) == (16, 401, 1000, 1e-4, 0.5, 200, 0.5)


def test_losw_preset_is_nikon_x4_with_the_local_sw_loss():
    nikon, losw = (
        load_config("nikon_x4", ["data.root=/data"]),
        load_config("nikon_x4_losw", ["data.root=/data"]),
    )
    assert (nikon["train"]["sw"], losw["train"]["sw"]) == ("global", "local")
    assert losw["train"]["loss"] == "l1sw"
    for c in (nikon, losw):
        del c["name"], c["train"]["sw"], c["log"]["out_dir"]
    assert losw == nikon


def test_overrides_and_their_errors(tmp_path):
    c = load_config(
        "sample_x4", ["train.lr=3e-4", "data.samples=[motorcycle]", "init.kernel_gen=/x.pth"]
    )
    assert c["train"]["lr"] == 3e-4 and c["init"]["kernel_gen"] == "/x.pth"
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        load_config("sample_x4", ["train.lrr=1"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config("sample_x4", ["train.lr"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_epoch_batches_split_ranks_and_resume_position():
    full = list(EpochBatches(12, 4, seed=3, epoch=1))
    assert sorted(i for b in full for i in b) == list(range(12))
    assert list(EpochBatches(12, 4, seed=3, epoch=1, start=2)) == full[2:]
    r0, r1 = (list(EpochBatches(12, 4, 3, 1, rank=r, world=2)) for r in (0, 1))
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(b) for b in full]
    assert full != list(EpochBatches(12, 4, seed=3, epoch=2))


def test_resume_continues_exactly(tmp_path):
    """4 iterations straight == 3 iterations (across an epoch end and lr decay), stop, resume, 1
    more."""
    straight = train(_tiny(tmp_path / "a"), progress=False)
    train(_tiny(tmp_path / "b", "train.stop_at=3"), progress=False)
    _, ckpt3 = _weights(tmp_path / "b" / "last.pt")
    assert ckpt3["extra"]["iteration"] == 3
    resumed = train(_tiny(tmp_path / "b"), resume=True, progress=False)
    (wa, ca), (wb, cb) = _weights(straight), _weights(resumed)
    assert ca["extra"]["iteration"] == cb["extra"]["iteration"] == 4
    for k in wa:
        assert torch.equal(wb[k], wa[k]), k  # bit for bit
    events = glob.glob(str(tmp_path / "a" / "tb" / "events.*"))
    assert events and os.path.getsize(events[0]) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(events[0])
    acc.Reload()
    assert len(acc.Scalars("loss/total")) == 4 and acc.Images("train/bicubic_out_gt")
    lrs = [e.value for e in acc.Scalars("lr/restoration")]
    # halved at each epoch end
    assert lrs[0] == pytest.approx(5e-4) and lrs[-1] == pytest.approx(1.25e-4)


def _same(a, b) -> bool:
    """Equal nested dicts / lists of tensors and plain values (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_training_state_round_trips_into_a_fresh_run(tmp_path):
    """restore_training_state gives a freshly built run exactly what save_training_state saved:
    weights, optimiser and scheduler states, the iteration and the RNG states; a run of another
    number of processes is refused."""
    import dataclasses
    import random

    from dzsr.distributed import Dist
    from dzsr.train import (
        build_run,
        epoch_loader,
        restore_training_state,
        save_training_state,
        setup,
        train_step,
    )

    config, path = _tiny(tmp_path / "s"), str(tmp_path / "s" / "state.pt")
    run = build_run(config, *setup(config))
    for iteration, batch in enumerate(epoch_loader(run, 0), start=1):  # an epoch: lr decayed once
        train_step(run, batch, iteration)
    save_training_state(path, run, 2)
    draws = torch.rand(4), np.random.rand(4).tolist(), random.random()
    other = build_run(config, *setup(config))
    assert not _same(other.model.state_dict(), run.model.state_dict())
    with pytest.raises(
        ValueError, match="written by 1 processes; resume with the same number, not 2"
    ):
        restore_training_state(path, dataclasses.replace(other, dist=Dist(0, 2)))
    assert restore_training_state(path, other) == 2
    assert _same((torch.rand(4), np.random.rand(4).tolist(), random.random()), draws)
    assert _same(other.model.state_dict(), run.model.state_dict())
    for name in run.optimizers:
        assert _same(other.optimizers[name].state_dict(), run.optimizers[name].state_dict())
        assert other.schedulers[name].state_dict() == run.schedulers[name].state_dict()
    assert other.optimizers["restoration"].param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_resume_refuses_a_final_checkpoint(tmp_path):
    final = train(
        _tiny(tmp_path / "a", "train.epochs=1", "train.iters_per_epoch=1"), progress=False
    )
    with pytest.raises(ValueError, match="no optimizer state"):
        train(_tiny(tmp_path / "a"), resume=final, progress=False)


def test_resume_refuses_breaking_changes_and_allows_safe_ones(tmp_path):
    """A changed batch size (or seed) is refused before anything is written, naming each key with
    its old and new value and the keys that may change; changed resume-safe keys (and the lr
    written as a string) continue the run to its end."""
    train(_tiny(tmp_path / "r", "train.stop_at=1"), progress=False)
    last = tmp_path / "r" / "last.pt"
    before = last.stat().st_mtime_ns
    with pytest.raises(ConfigError) as err:
        train(_tiny(tmp_path / "r", "train.batch_size=4", "seed=3"), resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith(
        f"cannot resume {last} exactly: seed: 0 -> 3; train.batch_size: 2 -> 4 (as trained -> now)"
    )
    assert "keys that may change on resume: name, device, data.workers" in msg
    assert "train.epochs" in msg
    assert last.stat().st_mtime_ns == before and _weights(last)[1]["extra"]["iteration"] == 1
    fork = _tiny(
        tmp_path / "fork",
        "train.epochs=1",
        "log.scalars_every=2",
        "name=more",
        "device=cpu",
        "init.bicubic=false",
        "train.lr='5e-4'",
    )
    resumed = train(fork, resume=str(last), progress=False)
    assert resumed == str(tmp_path / "fork" / "final.pt")
    ckpt = _weights(resumed)[1]
    assert ckpt["extra"]["iteration"] == 2 and ckpt["extra"]["train_config"]["name"] == "more"


def test_kernel_gen_stage_trains_only_the_degradation_network(tmp_path):
    c = _tiny(tmp_path / "k", "stage=kernel_gen", "train.epochs=1", "train.iters_per_epoch=1")
    torch.manual_seed(0)
    path = train(c, progress=False)
    trained, _ = _weights(path)
    fresh = load_checkpoint(tmp_path / "k" / "last.pt")[1]["extra"]
    assert set(fresh["optimizers"]) == {"kernel_gen"}
    from dzsr.train_parts import build_model

    torch.manual_seed(c["seed"])
    init = build_model(c).state_dict()
    changed = {k.split(".")[0] for k in trained if not torch.equal(trained[k], init[k])}
    assert changed == {"kernel_gen"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from dzsr.train import fit

    config = _tiny(out_dir, "train.epochs=1", "train.iters_per_epoch=2", "device=cpu")
    # ranks start from different seeds; rank 0's weights are broadcast
    model, _ = fit(config, progress=False)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _init_weights(out_dir):
    from dzsr.train_parts import build_model

    config = _tiny(out_dir)
    torch.manual_seed(config["seed"])  # rank 0's seed
    return build_model(config).state_dict()


def test_ddp_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    model, ckpt = load_checkpoint(os.path.join(out, "final.pt"))
    assert ckpt["extra"]["iteration"] == 2
    r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    for k, v in model.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], v), k
    assert any(not torch.equal(r0[k], v) for k, v in _init_weights(out).items())  # it trained
    last = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert len(last["extra"]["rng"]) == 2  # both ranks' RNG states kept for resume


def test_prepared_folder_trains(tmp_path):
    """`dzsr prepare` output (data.kind=folder) feeds training."""
    from dzsr.sample import prepare_sample_data

    prepare_sample_data(str(tmp_path / "data"), ["motorcycle"], 4, ["ihc.png"])
    assert sorted(os.listdir(tmp_path / "data" / "train_LR")) == ["ihc_x1.png", "motorcycle_x1.png"]
    path = train(
        _tiny(
            tmp_path / "f",
            "data.kind=folder",
            f"data.root={tmp_path / 'data'}",
            "train.epochs=1",
            "train.iters_per_epoch=1",
        ),
        progress=False,
    )
    assert load_checkpoint(path)[1]["extra"]["iteration"] == 1


def test_bad_sw_precision_is_named_at_load(tmp_path):
    with pytest.raises(ConfigError, match="train.sw_precision must be float32 or bfloat16, got "):
        _tiny(tmp_path / "p", "train.loss=l1sw", "train.sw_precision=half")
    assert not (tmp_path / "p").exists()


def test_bfloat16_sw_loss_refused_on_a_cpu_without_bfloat16(tmp_path, monkeypatch):
    """train.sw_precision=bfloat16 on a CPU that would emulate bfloat16 is refused before anything
    is written; where the SW loss is not used (loss l1) or the CPU has it, the setting passes."""
    from dzsr.train import check_before_work

    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: False)
    sw_bf16 = ("train.loss=l1sw", "train.sw_precision=bfloat16")
    config = _tiny(tmp_path / "b", "device=cpu", *sw_bf16)
    message = r"^train.sw_precision bfloat16 on the CPU needs a CPU with bfloat16 arithmetic .*"
    with pytest.raises(ValueError, match=message + r"use train.sw_precision=float32$"):
        train(config, progress=False)
    assert not (tmp_path / "b").exists()
    assert check_before_work(_tiny(tmp_path / "l1", "device=cpu", sw_bf16[1]), None, False) is None
    monkeypatch.setattr("dzsr.infer.native_bfloat16", lambda: True)
    assert check_before_work(config, None, False) is None


def test_device_without_cuda_refused_before_anything_is_written(tmp_path, monkeypatch):
    """train() with device=cuda where CUDA is not available: one ValueError naming the config key,
    raised before log.out_dir is made."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = _tiny(tmp_path / "c", "device=cuda")
    with pytest.raises(ValueError, match=r"^config key device cuda: CUDA is not available"):
        train(config, progress=False)
    assert not (tmp_path / "c").exists()


def test_bad_sw_kind_is_named_at_load(tmp_path):
    with pytest.raises(ConfigError, match="train.sw must be global or local, got 'locale'"):
        _tiny(tmp_path / "s", "train.loss=l1sw", "train.sw=locale")
    assert not (tmp_path / "s").exists()


def test_local_sw_loss_trains(tmp_path):
    """train.sw=local: the objective is SelfDZSR++'s LOSWLoss and a training step runs with it
    (random VGG-19 weights written here), logging a finite SW part."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dzsr.losses import VGG19_FILE, LOSWLoss, VGG19Features
    from dzsr.train_parts import build_model, build_step

    vgg = VGG19Features(("relu5_2",), weights=None).features
    torch.save({f"features.{k}": t for k, t in vgg.state_dict().items()}, tmp_path / VGG19_FILE)
    local = ("train.loss=l1sw", "train.sw=local", f"train.sw_weights={tmp_path / VGG19_FILE}")
    c = _tiny(tmp_path / "l", *local, "train.epochs=1", "train.iters_per_epoch=1")
    step = build_step(build_model(c), c, torch.device("cpu"), 1)
    assert type(step.objective.sw_loss) is LOSWLoss
    path = train(c, progress=False)
    assert load_checkpoint(path)[1]["extra"]["iteration"] == 1
    (events,) = glob.glob(str(tmp_path / "l" / "tb" / "events.*"))
    acc = EventAccumulator(events)
    acc.Reload()
    (sw,) = acc.Scalars("loss/restoration_sw")
    assert np.isfinite(sw.value) and sw.value > 0
