"""Data-parallel training with torchrun: one process per device, DistributedDataParallel.

    torchrun --nproc-per-node 2 -m ferkit train --train-dir data/train --val-dir data/val --out runs/ddp

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them (a plain
``ferkit train``) everything here is a no-op and training runs in one process as always. The gloo
backend serves CPUs, NCCL GPUs (one per local rank). ``--batch-size`` stays the global batch: each
of the N ranks takes batch/N images of every step from its shard of the epoch's seeded permutation,
so N processes take the same optimiser steps as one process would (the learning rate needs no
change). Only rank 0 writes the run folder; the others wait at barriers.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import FerkitError

_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: A rank that waits longer than this for the others (one died) gives up with one line.
DEFAULT_TIMEOUT_S = int(os.environ.get("FERKIT_DIST_TIMEOUT", "600"))


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            try:
                torch.distributed.barrier()
            except RuntimeError as exc:
                raise FerkitError(f"rank {self.rank}: another process stopped or timed out "
                                  f"({str(exc).splitlines()[0][:100]})") from None

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (every rank gets the result)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        try:
            torch.distributed.all_reduce(t)
        except RuntimeError as exc:
            raise FerkitError(f"rank {self.rank}: another process stopped or timed out "
                              f"({str(exc).splitlines()[0][:100]})") from None
        return t.tolist()

    def broadcast(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's values on every rank."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, 0)
        return t.tolist()

    def gather_tensor(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped CPU tensor (for per-rank generator states)."""
        if not self.active:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather_object(out, t) if t.device.type == "cpu" else torch.distributed.all_gather(out, t)
        return out


def from_env() -> Dist:
    """The process's place in a torchrun job; Dist() (one process) when torchrun did not start it.
    Inconsistent variables are one clear error."""
    present = {k: os.environ.get(k) for k in _ENV}
    if present["WORLD_SIZE"] in (None, "", "1"):
        return Dist()
    missing = [k for k, v in present.items() if not v]
    if missing:
        raise FerkitError(f"WORLD_SIZE={present['WORLD_SIZE']} but {', '.join(missing)} not set: start several "
                          "processes with torchrun (e.g. torchrun --nproc-per-node 2 -m ferkit train ...)")
    try:
        rank, local, world = int(present["RANK"]), int(present["LOCAL_RANK"]), int(present["WORLD_SIZE"])
    except ValueError:
        raise FerkitError(f"RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers (got {present['RANK']!r}, "
                          f"{present['LOCAL_RANK']!r}, {present['WORLD_SIZE']!r})") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local <= rank:
        raise FerkitError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}")
    return Dist(rank, local, world)


def setup(dist: Dist, device_name: str) -> torch.device:
    """Join the process group (gloo on CPU, NCCL on CUDA) and pick this rank's device."""
    from ..runtime import select_device

    device = select_device(device_name)
    if not dist.active:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() <= dist.local_rank:
            raise FerkitError(f"rank {dist.rank} wants cuda:{dist.local_rank} but only {torch.cuda.device_count()} "
                              "GPU(s) are visible")
        device = torch.device(f"cuda:{dist.local_rank}")
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=dist.rank,
                                             world_size=dist.world,
                                             timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S))
    return device


def teardown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch(run, batch_size: int, device_name: str, num_threads: int | None = None, dist: Dist | None = None):
    """Take this process's place (torchrun's, or the only one), call ``run(dist, device)`` and leave
    the process group; a collective that fails because another rank died becomes one line."""
    dist = from_env() if dist is None else dist
    if dist.active and batch_size % dist.world:
        raise FerkitError(f"--batch-size {batch_size} (the global batch) must be divisible by the number of "
                          f"processes ({dist.world})")
    if num_threads:
        torch.set_num_threads(num_threads)
    device = setup(dist, device_name)
    try:
        return run(dist, device)
    except RuntimeError as exc:
        if not dist.active:
            raise
        raise FerkitError(f"rank {dist.rank}: another process stopped or timed out "
                          f"({str(exc).splitlines()[0][:120]})") from None
    finally:
        teardown(dist)


def check_world(saved: dict | None, dist: Dist, where) -> None:
    """A run saved by N processes resumes only with N (the data order depends on it)."""
    if saved is not None and saved.get("world_size", 1) != dist.world:
        raise FerkitError(f"{where} was trained by {saved.get('world_size', 1)} process(es); resume it with "
                          f"the same number (this is {dist.world}), or pass --overwrite")
