"""Multi-process training through PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=K -m difflab train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; ``setup`` then
joins the process group (gloo on the CPU, NCCL on CUDA). Without those variables everything is a single
process and no process group is created.

How a global batch is split: every rank draws the SAME global batch indices, sigmas, noise and label
dropout from identically seeded generators and keeps its own contiguous slice, so a run's randomness, and
therefore its result, does not depend on the world size (up to float summation order in the all-reduce).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collective tensors live: "cuda" under NCCL

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of ``n`` (``n`` divisible by the world size)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Average a Python float over ranks (identity in a single process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (so all ranks stop together)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=self.comm_device)
        dist.all_reduce(t)
        return bool(t > 0)

    def device(self, requested: torch.device) -> torch.device:
        if self.active and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested


def setup(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (idempotent), else a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=rank, world=world, local_rank=local, comm_device="cuda" if device_type == "cuda" else "cpu")


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if next(model.parameters()).device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce (for all but the last micro-batch of an accumulated step)."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
