"""Training (``dzsr train --config FILE [key=value ...] [--resume]``), one process or ``torchrun``
DDP.

Stages (``stage`` in the config), as the authors train:
  * ``kernel_gen``: the degradation network alone, L1 to the LR + 100 x kernel centroid loss (the
    authors ship this stage's result as ``KernelGen_model_400.pth``);
  * ``joint``: KernelGen and the restoration network together (``SelfDZSRObjective``: L1 [+ SW]
    for the SR, the KernelGen loss for the degradation network), KernelGen at
    ``kernel_lr_factor`` x lr.
Schedule: Adam(0.9, 0.999); an "epoch" is ``iters_per_epoch`` iterations; StepLR halves the lr
every ``decay_every`` epochs (the authors' ``--lr_decay_iters 200 --niter 401``).

``fit`` reads as its steps: ``check_before_work`` (outputs, resumability, and a bfloat16 SW loss
refused on a CPU without bfloat16 arithmetic, before anything is built or written), ``setup``
(device, process group, seeds), ``build_run`` (model, data, optimisers, the train step),
``restore_training_state`` (on resume), ``train_loop`` (iterations, checkpoints, the final save).
The config comes validated (``dzsr.config.load_config`` or ``dzsr.config_schema.validate_config``);
the two rules that need the launch or the checkpoint (``check_world_size``, ``check_resume``) are in
``dzsr.config_schema`` too.

Exact resume (docs/design.md#training): ``save_training_state`` writes ``out_dir/last.pt``
atomically every ``checkpoint_every`` iterations: the networks, both optimisers and schedulers,
the iteration, the config and every rank's torch / numpy / python RNG states;
``restore_training_state``, beside it, puts all of it back. Samples are a pure function of
(seed, epoch, index) (``TrainPatches``) and the order of indices of an epoch is a seeded
permutation (``EpochBatches``), so the data position is restored by skipping to the iteration's
place in its epoch (no data is re-read). Training N, stopping (``train.stop_at``), resuming and
training N more gives the same weights as training 2N. Before anything is built,
``check_resumable`` refuses a checkpoint whose config differs in a key that breaks that
(``dzsr.config_schema.check_resume`` lists which keys may change).

Nothing is lost: ``out_dir`` is checked before any work (a folder, or creatable, and writable); a
run without ``resume`` refuses an ``out_dir`` that already holds ``last.pt``, ``final.pt`` or
``iter_*.pt`` unless ``overwrite`` is given (then those files are replaced as the new run writes
its own; others stay). Ctrl-C (SIGINT) in the training loop finishes the current iteration,
writes ``last.pt`` for it (the same file a ``checkpoint_every`` save there would write, so
resuming from it continues exactly) and raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``);
a second Ctrl-C interrupts at once, leaving the last checkpoint written. Under DDP the ranks agree
on stopping (one tiny all-reduce per iteration) so they stop at the same iteration.
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
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, save_checkpoint
from .config_schema import check_resume, check_world_size
from .data import TrainPatches, worker_init
from .devices import resolve_device
from .distributed import Dist, agree, barrier, gather_rng_states, init_distributed, set_rng_state
from .infer import check_cpu_bfloat16
from .models import SelfDZSR
from .outputs import OutputError, check_folder
from .train_parts import (
    EpochBatches,
    build_model,
    build_optimizers,
    build_patches,
    build_source,
    build_step,
    uses_sw_loss,
)

LAST = "last.pt"
FINAL = "final.pt"


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the loop and the training state are made of (``build_run``): the validated config,
    this rank's device and place (``dist``), the model (on ``device``, unwrapped), the optimisers
    and schedulers by network name, the training patches, and the ``TrainStep`` (DDP-wrapped
    under ``torchrun``) that computes the loss."""

    config: dict
    device: torch.device
    dist: Dist
    model: SelfDZSR
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    patches: TrainPatches
    step: nn.Module


# ----------------------------------------------------------------------------- training state


def save_training_state(path: str, run: Run, iteration: int) -> None:
    """Write everything an exact resume needs to ``path`` (``save_checkpoint``, atomic): the
    networks, and in ``extra``: ``iteration``, ``train_config``, ``optimizers`` and
    ``schedulers`` (state dicts by name) and ``rng`` (every rank's ``rng_state``, in rank order).
    Every rank calls it (the RNG states are gathered); rank 0 writes."""
    rng = gather_rng_states(run.dist)
    if run.dist.main:
        save_checkpoint(
            path,
            run.model,
            {
                "iteration": iteration,
                "train_config": run.config,
                "rng": rng,
                "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in run.schedulers.items()},
            },
        )
    barrier()


def restore_training_state(path: str, run: Run) -> int:
    """Put back into ``run`` what ``save_training_state`` wrote to ``path``: the networks,
    optimisers, schedulers and this rank's RNG states; returns the iteration reached. Called last
    before the loop, once everything that draws random numbers is built (``check_resumable`` has
    checked the config)."""
    extra = load_checkpoint(path, run.model)[1]["extra"]
    rngs = extra["rng"]
    if len(rngs) != run.dist.world:
        raise ValueError(
            f"{path} was written by {len(rngs)} processes; resume with the same "
            f"number, not {run.dist.world}"
        )
    for k, o in run.optimizers.items():
        o.load_state_dict(extra["optimizers"][k])
        run.schedulers[k].load_state_dict(extra["schedulers"][k])
    set_rng_state(rngs[run.dist.rank])
    return int(extra["iteration"])


def check_resumable(path: str, config: dict) -> None:
    """Refuse to resume from ``path`` unless it holds a training state (not ``save_model``'s) and
    was trained with a config that ``config`` continues exactly (``check_resume``)."""
    extra = load_checkpoint(path)[1]["extra"]
    if "optimizers" not in extra:
        raise ValueError(
            f"{path} has no optimizer state: it is a final checkpoint, not one to resume from"
        )
    check_resume(extra.get("train_config"), config, path)


def save_model(path: str, run: Run, iteration: int) -> None:
    """Write the trained networks with ``iteration`` and ``train_config``, no optimiser or RNG
    state (``final.pt``: for inference and export, not for resuming)."""
    save_checkpoint(path, run.model, {"iteration": iteration, "train_config": run.config})


# ----------------------------------------------------------------------------- fit, step by step


def train(
    config: dict, resume: str | bool | None = None, progress: bool = True, overwrite: bool = False
) -> str:
    """Run training as configured; returns the path of the final checkpoint (``out_dir/final.pt``,
    or ``out_dir/last.pt`` when ``train.stop_at`` ends it early).

    config: a validated config (``load_config`` or ``validate_config``). resume: True (continue
    from ``out_dir/last.pt``) or a checkpoint path. overwrite: start afresh even if ``out_dir``
    holds checkpoints (module docstring).
    """
    return fit(config, resume, progress, overwrite)[1]


def fit(
    config: dict, resume: str | bool | None = None, progress: bool = True, overwrite: bool = False
) -> tuple[SelfDZSR, str]:
    """``train`` that also returns this process's trained model (each DDP rank holds a replica)."""
    resume_path = check_before_work(config, resume, overwrite)
    device, d = setup(config)
    run = build_run(config, device, d)
    iteration = restore_training_state(resume_path, run) if resume_path else 0
    return run.model, train_loop(run, iteration, progress)


def check_before_work(config: dict, resume: str | bool | None, overwrite: bool) -> str | None:
    """Check the config's device exists here (``dzsr.devices.resolve_device``), the SW loss's
    precision runs natively on the training CPU
    (``dzsr.infer.check_cpu_bfloat16``), ``log.out_dir`` is usable, the checkpoint to resume from
    exists and continues this config exactly, and a fresh run would replace no checkpoint (module
    docstring); returns the checkpoint to resume from (None: a fresh run)."""
    device = resolve_device(config["device"], "config key device")
    sw_bfloat16 = uses_sw_loss(config) and config["train"]["sw_precision"] == "bfloat16"
    if sw_bfloat16 and device.type == "cpu":
        check_cpu_bfloat16("train.sw_precision bfloat16 on the CPU", "train.sw_precision=float32")
    out_dir = config["log"]["out_dir"]
    check_folder(out_dir, "log.out_dir")
    path = os.path.join(out_dir, LAST) if resume is True else resume
    if path:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: checkpoint file not found: {path}")
        check_resumable(path, config)
        return path
    found = [f for f in (LAST, FINAL) if os.path.isfile(os.path.join(out_dir, f))]
    found += sorted(
        os.path.basename(f) for f in glob.glob(os.path.join(glob.escape(out_dir), "iter_*.pt"))
    )
    if found and not overwrite:
        raise OutputError(
            f"log.out_dir {out_dir} already holds checkpoints ({', '.join(found)}): "
            f"continue them with --resume, replace them with --overwrite, or choose "
            f"another log.out_dir"
        )
    return None


def setup(config: dict) -> tuple[torch.device, Dist]:
    """The device (``auto``: CUDA when available), the ``torchrun`` process group with one GPU per
    rank, ``out_dir``, and the global RNGs seeded with ``seed + rank``."""
    device = resolve_device(config["device"], "config key device")
    d = init_distributed(device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    check_world_size(config, d.world)
    os.makedirs(config["log"]["out_dir"], exist_ok=True)
    seed = config["seed"] + d.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return device, d


def build_run(config: dict, device: torch.device, d: Dist) -> Run:
    """Model (rank 0's initial weights on every rank), patches, optimisers and the train step, in
    this order: a fresh run's random draws, which resuming reproduces, follow it."""
    model = build_model(config)
    if d.world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    patches = build_patches(config, build_source(config, d.rank))
    optimizers, schedulers = build_optimizers(model, config)
    model.to(device).train()
    step = build_step(model, config, device, d.world)
    return Run(config, device, d, model, optimizers, schedulers, patches, step)


def train_loop(run: Run, iteration: int, progress: bool) -> str:
    """Train from ``iteration`` to ``train.stop_at`` (or the end), saving the training state every
    ``log.checkpoint_every`` iterations and at the stop; returns the checkpoint written last
    (``final.pt`` once every epoch is done)."""
    t, log = run.config["train"], run.config["log"]
    total = t["epochs"] * t["iters_per_epoch"]
    stop = min(total, t["stop_at"] or total)
    writer, bar = _open_monitors(run, iteration, stop, progress)
    interrupted, restore_sigint = _defer_sigint()
    try:
        while iteration < stop:
            for batch in epoch_loader(run, iteration):
                iteration += 1
                loss, parts, visuals = train_step(run, batch, iteration)
                _log(writer, bar, log, iteration, loss, parts, visuals, run.optimizers)
                saved = iteration % log["checkpoint_every"] == 0 or iteration == stop
                if saved:
                    _checkpoint(run, iteration)
                if agree(interrupted(), run.dist, run.device):
                    if not saved:
                        _checkpoint(run, iteration)
                    last = os.path.join(log["out_dir"], LAST)
                    raise TrainingInterrupted(
                        f"at iteration {iteration} of {stop}; wrote {last} (continue with --resume)"
                    )
                if iteration >= stop:
                    break
        return _finish(run, iteration, total)
    finally:
        restore_sigint()
        for monitor in (bar, writer):
            if monitor is not None:
                monitor.close()


# ----------------------------------------------------------------------------- loop parts


def epoch_loader(run: Run, iteration: int) -> DataLoader:
    """This rank's batches of ``iteration``'s epoch, from the iteration's place in it on."""
    t = run.config["train"]
    epoch, start = divmod(iteration, t["iters_per_epoch"])
    run.patches.set_epoch(epoch)
    sampler = EpochBatches(
        len(run.patches),
        t["batch_size"],
        run.config["seed"],
        epoch,
        start,
        run.dist.rank,
        run.dist.world,
    )
    # Own generator: creating the loader must not draw from the global RNG (exact resume).
    return DataLoader(
        run.patches,
        batch_sampler=sampler,
        worker_init_fn=worker_init,
        num_workers=run.config["data"]["workers"],
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(epoch),
    )


def train_step(run: Run, batch: dict, iteration: int):
    """Run iteration number ``iteration`` (from 1) on ``batch``: forward, backward, one step of
    every optimiser, and of every scheduler when it ends an epoch. Returns ``TrainStep``'s
    (loss, parts, visuals)."""
    batch = {
        k: v.to(run.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
    loss, parts, visuals = run.step(batch)
    for o in run.optimizers.values():
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in run.optimizers.values():
        o.step()
    if iteration % run.config["train"]["iters_per_epoch"] == 0:
        for s in run.schedulers.values():
            s.step()
    return loss, parts, visuals


def _checkpoint(run: Run, iteration: int) -> None:
    """``last.pt`` for ``iteration``, and a kept copy ``iter_N.pt`` every ``log.keep_every``."""
    log = run.config["log"]
    save_training_state(os.path.join(log["out_dir"], LAST), run, iteration)
    if log["keep_every"] and iteration % log["keep_every"] == 0:
        save_training_state(
            os.path.join(log["out_dir"], f"iter_{iteration:07d}.pt"), run, iteration
        )


def _finish(run: Run, iteration: int, total: int) -> str:
    """``final.pt`` (``save_model``) when every epoch is done; the path of the last checkpoint."""
    done = iteration >= total
    path = os.path.join(run.config["log"]["out_dir"], FINAL if done else LAST)
    if done and run.dist.main:
        save_model(path, run, iteration)
    barrier()
    return path


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended training after the checkpoint of the iteration reached was written."""


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


def _open_monitors(run: Run, iteration: int, stop: int, progress: bool):
    """(TensorBoard writer of ``out_dir/tb``, tqdm bar) on rank 0, else None; they start at
    ``iteration`` (a resumed run replaces the events logged after it)."""
    if not run.dist.main:
        return None, None
    from torch.utils.tensorboard import SummaryWriter

    config = run.config
    writer = SummaryWriter(os.path.join(config["log"]["out_dir"], "tb"), purge_step=iteration)
    if not progress:
        return writer, None
    from tqdm import tqdm

    return writer, tqdm(
        total=stop,
        initial=iteration,
        desc=f"{config['name']} [{config['stage']}]",
        dynamic_ncols=True,
    )


def _image_grid(visuals: dict) -> torch.Tensor:
    from torchvision.utils import make_grid

    out, gt = visuals["out"][:1].detach(), visuals["gt"][:1]
    lr_up = F.interpolate(
        visuals["lr"][:1], size=gt.shape[-2:], mode="bicubic", align_corners=False
    )
    return make_grid(torch.cat([lr_up, out, gt]).clamp(0, 1).float().cpu(), nrow=3)


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
