"""Training (``dzsr train --config FILE [key=value ...] [--resume]``), single process or ``torchrun`` DDP.

Stages (``stage`` in the config), as the authors train:
  * ``kernel_gen``: the degradation network alone, L1 to the LR + 100 x kernel centroid loss (the
    authors ship this stage's result as ``KernelGen_model_400.pth``);
  * ``joint``: KernelGen and the restoration network together (``SelfDZSRObjective``: L1 [+ SW] for
    the SR, the KernelGen loss for the degradation network), KernelGen at ``kernel_lr_factor`` x lr.
Schedule: Adam(0.9, 0.999); an "epoch" is ``iters_per_epoch`` iterations; StepLR halves the lr
every ``decay_every`` epochs (the authors' ``--lr_decay_iters 200 --niter 401``).

Exact resume: ``out_dir/last.pt`` (written atomically every ``checkpoint_every`` iterations) holds
the networks, both optimizers and schedulers, the iteration and every rank's torch / numpy / python
RNG states. Samples are a pure function of (seed, epoch, index) (``TrainPatches``) and the order of
indices of an epoch is a seeded permutation, so the data position is restored by skipping to the
iteration's place in its epoch (no data is re-read). Training N, stopping (``train.stop_at``),
resuming and training N more gives the same weights as training 2N. Before anything is built,
a resume checks the checkpoint's config against the new one and refuses changes that would break
that (batch size, data, seeds, model, loss, optimiser: ``dzsr.config_schema`` lists which keys may change).

Nothing is lost: ``out_dir`` is checked before any work (a folder, or creatable, and writable); a
run without ``resume`` refuses an ``out_dir`` that already holds ``last.pt``, ``final.pt`` or
``iter_*.pt`` unless ``overwrite`` is given (then those files are replaced as the new run writes its
own; others stay). Ctrl-C (SIGINT) in the training loop finishes the current iteration, writes
``last.pt`` for it (the same file a ``checkpoint_every`` save there would write, so resuming from
it continues exactly) and raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``); a second Ctrl-C
interrupts at once, leaving the last checkpoint written. Under DDP the ranks agree on stopping
(one tiny all-reduce per iteration) so they stop at the same iteration.
"""
from __future__ import annotations

import glob
import os
import random
import signal
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .checkpoint import load_checkpoint, load_official, save_checkpoint
from .data import DualZoomDataset, TrainPatches, worker_init
from .losses import SelfDZSRObjective, SWLoss, kernel_gen_loss
from .config_schema import check_resume, validate_config
from .models import RestorationNet, SelfDZSR
from .models.bicubic_init import init_bicubic_
from .outputs import OutputError, check_folder
from .sample import prepare_sample_data

LAST = "last.pt"
FINAL = "final.pt"


# ----------------------------------------------------------------------------- data


def build_source(config: dict, rank: int) -> DualZoomDataset:
    data, scale = config["data"], config["scale"]
    kind = data["kind"]
    if kind == "sample":
        root = os.path.join(config["log"]["out_dir"], "sample_data")
        if rank == 0:
            prepare_sample_data(root, data["samples"], scale, data["photos"], data["photos_as"],
                                data["synthetic"], config["seed"])
        _barrier()
        return DualZoomDataset(root, "train", scale)
    if not data["root"]:
        raise ValueError(f"data.root is required for data.kind={kind} (e.g. data.root=/path/to/dataset)")
    subdir = {"nikon": "Nikon", "camerafusion": "CameraFusion"}.get(kind)
    return DualZoomDataset(data["root"], data["split"], scale, subdir=subdir)


class EpochBatches(Sampler):
    """Index batches of one epoch for one rank: a permutation of ``range(length)`` seeded by
    (seed, epoch), cut into global batches of ``batch_size``; rank r takes every world-th index of
    each. ``start`` skips the first batches (exact resume)."""

    def __init__(self, length: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        self.length, self.batch_size, self.seed, self.epoch = length, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        for i in range(self.start, self.length // self.batch_size):
            yield order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]

    def __len__(self) -> int:
        return self.length // self.batch_size - self.start


# ----------------------------------------------------------------------------- model step


class TrainStep(nn.Module):
    """``forward(batch) -> (loss, parts, visuals)`` for one stage; wrapped in DDP when distributed."""

    def __init__(self, model: SelfDZSR, stage: str, objective: SelfDZSRObjective):
        super().__init__()
        self.model, self.stage, self.objective = model, stage, objective

    def forward(self, batch: dict):
        lr, gt = batch["lr"], batch["gt"]
        if self.stage == "kernel_gen":
            degraded, kernels = self.model.kernel_gen(gt, lr)
            loss, parts = kernel_gen_loss(degraded, lr, kernels, self.objective.centroid_weight)
            return loss, parts, {"lr": lr, "out": degraded, "gt": lr}
        out = self.model(lr, batch["ref"], paste_ref=batch["ref"], paste_box=batch["ref_box"], gt=gt,
                         noise=batch["noise"])
        loss, parts = self.objective(out, gt, lr)
        return loss, parts, {"lr": lr, "out": out.sr, "gt": gt}


def build_model(config: dict) -> SelfDZSR:
    m = config["model"]
    model = SelfDZSR(config["scale"], drop_prob=m["drop_prob"], paste_prob=m["paste_prob"])
    init = config["init"]
    if init["checkpoint"]:
        load_checkpoint(init["checkpoint"], model)
    load_official(model, kernel_gen=init["kernel_gen"], extractor=init["extractor"])
    if init["bicubic"]:  # a fresh restoration network that starts as bicubic upsampling (KernelGen, extractor kept)
        model.restoration = init_bicubic_(RestorationNet(config["scale"], m["drop_prob"], m["paste_prob"]))
    return model


def build_optimizers(model: SelfDZSR, config: dict):
    t = config["train"]
    groups = {"kernel_gen": (model.kernel_gen, t["lr"] * t["kernel_lr_factor"])}
    if config["stage"] == "joint":
        groups["restoration"] = (model.restoration, t["lr"])
    optimizers = {name: torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999))
                  for name, (net, lr) in groups.items()}
    schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, step_size=t["decay_every"], gamma=t["gamma"])
                  for name, opt in optimizers.items()}
    return optimizers, schedulers


# ----------------------------------------------------------------------------- distributed + RNG


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def rng_state() -> dict:
    """This process's torch / numpy / python RNG states as plain, weights-only-loadable objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng(d: Dist) -> list[dict]:
    if d.world == 1:
        return [rng_state()]
    states = [None] * d.world
    dist.all_gather_object(states, rng_state())
    return states


# ----------------------------------------------------------------------------- loop


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _image_grid(visuals: dict) -> torch.Tensor:
    from torchvision.utils import make_grid

    out, gt = visuals["out"][:1].detach(), visuals["gt"][:1]
    lr_up = F.interpolate(visuals["lr"][:1], size=gt.shape[-2:], mode="bicubic", align_corners=False)
    return make_grid(torch.cat([lr_up, out, gt]).clamp(0, 1).float().cpu(), nrow=3)


def _save(path: str, model: SelfDZSR, config: dict, iteration: int, optimizers=None, schedulers=None,
          rng=None) -> None:
    extra = {"iteration": iteration, "train_config": config}
    if optimizers is not None:
        extra["optimizers"] = {k: o.state_dict() for k, o in optimizers.items()}
        extra["schedulers"] = {k: s.state_dict() for k, s in schedulers.items()}
        extra["rng"] = rng
    save_checkpoint(path, model, extra)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended training after the checkpoint of the iteration reached was written."""


def _check_out_dir(out_dir: str, resume, overwrite: bool) -> None:
    """``out_dir`` is usable, the checkpoint to resume from exists, and a fresh run would replace
    no checkpoint (module docstring)."""
    check_folder(out_dir, "log.out_dir")
    path = os.path.join(out_dir, LAST) if resume is True else resume
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: checkpoint file not found: {path}")
    if resume or overwrite:
        return
    found = [f for f in (LAST, FINAL) if os.path.isfile(os.path.join(out_dir, f))]
    found += sorted(os.path.basename(f) for f in glob.glob(os.path.join(glob.escape(out_dir), "iter_*.pt")))
    if found:
        raise OutputError(f"log.out_dir {out_dir} already holds checkpoints ({', '.join(found)}): continue them "
                          f"with --resume, replace them with --overwrite, or choose another log.out_dir")


def _defer_sigint():
    """Make the first SIGINT only set a flag (then the previous handler is back, so a second one
    interrupts at once). Returns (``interrupted()``, ``restore()``); no deferral outside the main
    thread or when SIGINT is ignored."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        return (lambda: False), (lambda: None)
    previous = signal.default_int_handler if previous is None else previous
    hit = []

    def handler(signum, frame):
        hit.append(signum)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    return (lambda: bool(hit)), (lambda: signal.signal(signal.SIGINT, previous))


def _agree(flag: bool, d: "Dist", device: torch.device) -> bool:
    """``flag`` on any rank (every rank gets the same answer)."""
    if d.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train(config: dict, resume: str | bool | None = None, progress: bool = True, overwrite: bool = False) -> str:
    """Run training as configured; returns the path of the final checkpoint (``out_dir/final.pt``,
    or ``out_dir/last.pt`` when ``train.stop_at`` ends it early).

    resume: True (continue from ``out_dir/last.pt``) or a checkpoint path. overwrite: start afresh
    even if ``out_dir`` holds checkpoints (module docstring).
    """
    return fit(config, resume, progress, overwrite)[1]


def fit(config: dict, resume: str | bool | None = None, progress: bool = True,
        overwrite: bool = False) -> tuple[SelfDZSR, str]:
    """``train`` that also returns this process's trained model (each DDP rank holds a replica)."""
    config = validate_config(config)  # a no-op on load_config's result; completes a hand-made dict
    stage, t, log = config["stage"], config["train"], config["log"]
    resume_path = (os.path.join(log["out_dir"], LAST) if resume is True else resume) if resume else None
    out_dir = log["out_dir"]
    _check_out_dir(out_dir, resume, overwrite)  # before anything is built or written
    if resume_path:
        _check_resumable(resume_path, config)
    want = config["device"]
    device = torch.device("cuda" if want == "auto" and torch.cuda.is_available() else ("cpu" if want == "auto" else want))
    d = init_distributed(device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if t["batch_size"] % d.world:
        raise ValueError(f"train.batch_size={t['batch_size']} must be divisible by the {d.world} processes")
    os.makedirs(out_dir, exist_ok=True)

    seed = config["seed"]
    torch.manual_seed(seed + d.rank)
    np.random.seed(seed + d.rank)
    random.seed(seed + d.rank)
    model = build_model(config)
    if d.world > 1:  # identical initial weights on every rank
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    source = build_source(config, d.rank)
    total = t["epochs"] * t["iters_per_epoch"]
    data = config["data"]
    patches = TrainPatches(source, data["patch_size"], t["iters_per_epoch"] * t["batch_size"], seed,
                           data["noise_sigma"], data["jpeg_quality"], data["noise_map"], data["channel_shuffle"])
    optimizers, schedulers = build_optimizers(model, config)

    iteration = 0
    if resume:
        path = resume_path
        _, ckpt = load_checkpoint(path, model)
        extra = ckpt["extra"]
        for k, o in optimizers.items():
            o.load_state_dict(extra["optimizers"][k])
            schedulers[k].load_state_dict(extra["schedulers"][k])
        iteration = int(extra["iteration"])
        rngs = extra["rng"]
        if len(rngs) != d.world:
            raise ValueError(f"{path} was written by {len(rngs)} processes; resume with the same number, not {d.world}")

    model.to(device).train()
    sw = None
    if stage == "joint" and t["loss"] == "l1sw":
        sw = SWLoss(t["sw_weights"] or "default", vgg_dtype=getattr(torch, t["sw_precision"]))
    step = TrainStep(model, stage, SelfDZSRObjective(sw)).to(device)
    if d.world > 1:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)

    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=iteration)
    stop = min(total, t["stop_at"] or total)
    bar = None
    if d.main and progress:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=iteration, desc=f"{config['name']} [{stage}]", dynamic_ncols=True)
    workers = data["workers"]
    if resume:  # restored last: building the loss and wrappers above may draw random numbers
        set_rng_state(rngs[d.rank])
    interrupted, restore_sigint = _defer_sigint()
    try:
        while iteration < stop:
            epoch, start = divmod(iteration, t["iters_per_epoch"])
            patches.set_epoch(epoch)
            sampler = EpochBatches(len(patches), t["batch_size"], seed, epoch, start, d.rank, d.world)
            # Own generator: creating the loader must not draw from the global RNG (exact resume).
            loader = DataLoader(patches, batch_sampler=sampler, num_workers=workers, worker_init_fn=worker_init,
                                pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(epoch))
            for batch in loader:
                loss, parts, visuals = step(_to(batch, device))
                for o in optimizers.values():
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in optimizers.values():
                    o.step()
                iteration += 1
                if iteration % t["iters_per_epoch"] == 0:
                    for s in schedulers.values():
                        s.step()
                _log(writer, bar, log, iteration, loss, parts, visuals, optimizers)
                saved = iteration % log["checkpoint_every"] == 0 or iteration == stop
                if saved:
                    _checkpoint(out_dir, model, config, iteration, optimizers, schedulers, d, log)
                if _agree(interrupted(), d, device):
                    if not saved:
                        _checkpoint(out_dir, model, config, iteration, optimizers, schedulers, d, log)
                    raise TrainingInterrupted(f"at iteration {iteration} of {stop}; wrote {os.path.join(out_dir, LAST)}"
                                              f" (continue with --resume)")
                if iteration >= stop:
                    break
        final = os.path.join(out_dir, FINAL)
        if d.main and iteration >= total:
            _save(final, model, config, iteration)
        _barrier()
        return model, final if iteration >= total else os.path.join(out_dir, LAST)
    finally:
        restore_sigint()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()


def _check_resumable(path: str, config: dict) -> None:
    """Refuse to resume from ``path`` unless it holds optimizer state and was trained with a config
    that ``config`` continues exactly (``dzsr.config_schema.check_resume``)."""
    extra = load_checkpoint(path)[1]["extra"]
    if "optimizers" not in extra:
        raise ValueError(f"{path} has no optimizer state: it is a final checkpoint, not one to resume from")
    check_resume(extra.get("train_config"), config, path)


def _checkpoint(out_dir, model, config, iteration, optimizers, schedulers, d: Dist, log) -> None:
    rng = _gather_rng(d)
    if d.main:
        _save(os.path.join(out_dir, LAST), model, config, iteration, optimizers, schedulers, rng)
        keep = log["keep_every"]
        if keep and iteration % keep == 0:
            _save(os.path.join(out_dir, f"iter_{iteration:07d}.pt"), model, config, iteration, optimizers, schedulers, rng)
    _barrier()


def _log(writer, bar, log, iteration, loss, parts, visuals, optimizers) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    if writer is None:
        return
    if iteration % log["scalars_every"] == 0:
        writer.add_scalar("loss/total", float(loss.detach()), iteration)
        for k, v in parts.items():
            writer.add_scalar(f"loss/{k}", float(v), iteration)
        for k, o in optimizers.items():
            writer.add_scalar(f"lr/{k}", o.param_groups[0]["lr"], iteration)
    if iteration % log["images_every"] == 0:
        writer.add_image("train/bicubic_out_gt", _image_grid(visuals), iteration)
