"""The parts a training run (``dzsr.train``) is built from, each from the validated config: the
training pairs (``build_source``) and their random patches (``build_patches``), the sampler that
orders an epoch (``EpochBatches``), the model (``build_model``), its optimisers and schedulers
(``build_optimizers``) and the forward pass with its loss (``TrainStep``, ``build_step``).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch.utils.data import Sampler

from .checkpoint import load_checkpoint, load_official
from .data import DualZoomDataset, TrainPatches
from .distributed import barrier
from .losses import LOSWLoss, SelfDZSRObjective, SWLoss, kernel_gen_loss
from .models import RestorationNet, SelfDZSR
from .models.bicubic_init import init_bicubic_
from .sample import prepare_sample_data


def build_source(config: dict, rank: int) -> DualZoomDataset:
    """The prepared pairs of ``data.kind``; for ``sample``, rank 0 first writes them to
    ``out_dir/sample_data`` (``dzsr.sample.prepare_sample_data``) while the others wait."""
    data, scale = config["data"], config["scale"]
    if data["kind"] == "sample":
        root = os.path.join(config["log"]["out_dir"], "sample_data")
        if rank == 0:
            prepare_sample_data(
                root,
                data["samples"],
                scale,
                data["photos"],
                data["photos_as"],
                data["synthetic"],
                config["seed"],
            )
        barrier()
        return DualZoomDataset(root, "train", scale)
    subdir = {"nikon": "Nikon", "camerafusion": "CameraFusion"}.get(data["kind"])
    return DualZoomDataset(data["root"], data["split"], scale, subdir=subdir)


def build_patches(config: dict, source: DualZoomDataset) -> TrainPatches:
    """The random training patches of ``source``: ``iters_per_epoch * batch_size`` per epoch."""
    data, t = config["data"], config["train"]
    return TrainPatches(
        source,
        data["patch_size"],
        t["iters_per_epoch"] * t["batch_size"],
        config["seed"],
        data["noise_sigma"],
        data["jpeg_quality"],
        data["noise_map"],
        data["channel_shuffle"],
    )


class EpochBatches(Sampler):
    """Index batches of one epoch for one rank: a permutation of ``range(length)`` seeded by
    (seed, epoch), cut into global batches of ``batch_size``; rank r takes every world-th index of
    each. ``start`` skips the first batches (exact resume)."""

    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.length, self.batch_size, self.seed, self.epoch = length, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        for i in range(self.start, self.length // self.batch_size):
            yield order[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world]

    def __len__(self) -> int:
        return self.length // self.batch_size - self.start


class TrainStep(nn.Module):
    """``forward(batch) -> (loss, parts, visuals)`` for one stage; wrapped in DDP when
    distributed. ``batch``: ``lr (N, 3, h, w)``, ``gt (N, 3, s*h, s*w)`` float32 in [0, 1] and,
    for ``joint``, ``ref``, ``ref_box``, ``noise`` (``TrainPatches``)."""

    def __init__(self, model: SelfDZSR, stage: str, objective: SelfDZSRObjective):
        super().__init__()
        self.model, self.stage, self.objective = model, stage, objective

    def forward(self, batch: dict):
        """``(loss, parts, visuals)`` for one ``batch`` (class docstring): stage ``kernel_gen``
        trains KernelGen alone on (gt, lr), the others the whole model with the objective; visuals
        {"lr", "out", "gt"} are the input, the output and its target (the LR for ``kernel_gen``)."""
        lr, gt = batch["lr"], batch["gt"]
        if self.stage == "kernel_gen":
            degraded, kernels = self.model.kernel_gen(gt, lr)
            loss, parts = kernel_gen_loss(degraded, lr, kernels, self.objective.centroid_weight)
            return loss, parts, {"lr": lr, "out": degraded, "gt": lr}
        out = self.model(
            lr,
            batch["ref"],
            paste_ref=batch["ref"],
            paste_box=batch["ref_box"],
            gt=gt,
            noise=batch["noise"],
        )
        loss, parts = self.objective(out, gt, lr)
        return loss, parts, {"lr": lr, "out": out.sr, "gt": gt}


def build_model(config: dict) -> SelfDZSR:
    """A fresh ``SelfDZSR`` with the starting weights of ``init`` (draws from torch's RNG)."""
    m, init = config["model"], config["init"]
    model = SelfDZSR(config["scale"], drop_prob=m["drop_prob"], paste_prob=m["paste_prob"])
    if init["checkpoint"]:
        load_checkpoint(init["checkpoint"], model)
    load_official(model, kernel_gen=init["kernel_gen"], extractor=init["extractor"])
    if init["bicubic"]:  # a restoration network that starts as bicubic upsampling, the rest kept
        net = RestorationNet(config["scale"], m["drop_prob"], m["paste_prob"])
        model.restoration = init_bicubic_(net)
    return model


def build_optimizers(model: SelfDZSR, config: dict):
    """({name: Adam}, {name: StepLR}) for ``kernel_gen`` and, in stage ``joint``,
    ``restoration``."""
    t = config["train"]
    groups = {"kernel_gen": (model.kernel_gen, t["lr"] * t["kernel_lr_factor"])}
    if config["stage"] == "joint":
        groups["restoration"] = (model.restoration, t["lr"])
    optimizers = {
        name: torch.optim.Adam(
            [p for p in net.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999)
        )
        for name, (net, lr) in groups.items()
    }
    schedulers = {
        name: torch.optim.lr_scheduler.StepLR(opt, t["decay_every"], gamma=t["gamma"])
        for name, opt in optimizers.items()
    }
    return optimizers, schedulers


def uses_sw_loss(config: dict) -> bool:
    """Whether the configured objective has an SW term (stage ``joint`` with loss ``l1sw``), so
    ``train.sw``, ``train.sw_weights`` and ``train.sw_precision`` take effect."""
    return config["stage"] == "joint" and config["train"]["loss"] == "l1sw"


def build_step(model: SelfDZSR, config: dict, device: torch.device, world: int) -> nn.Module:
    """The ``TrainStep`` of the configured stage and loss on ``device`` (DDP when ``world`` > 1)."""
    t = config["train"]
    sw = None
    if uses_sw_loss(config):
        loss_class = LOSWLoss if t["sw"] == "local" else SWLoss
        sw = loss_class(t["sw_weights"] or "default", vgg_dtype=getattr(torch, t["sw_precision"]))
    step = TrainStep(model, config["stage"], SelfDZSRObjective(sw)).to(device)
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    return step
