"""Processes of a training run: the ``torchrun`` process group (``init_distributed``, ``Dist``),
collectives that are no-ops in a single process (``barrier``, ``agree``), and the RNG states an
exact resume saves for every rank (``rng_state``, ``set_rng_state``, ``gather_rng_states``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's ``rank`` among ``world`` processes (0 of 1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the main process."""
        return self.rank == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
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
    """This process's torch / numpy / python (and CUDA) RNG states as plain, weights-only-loadable
    objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(d: Dist) -> list[dict]:
    """Every rank's ``rng_state``, in rank order (a collective: every rank calls it)."""
    if d.world == 1:
        return [rng_state()]
    states = [None] * d.world
    dist.all_gather_object(states, rng_state())
    return states


def agree(flag: bool, d: Dist, device: torch.device) -> bool:
    """``flag`` on any rank (every rank gets the same answer)."""
    if d.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
