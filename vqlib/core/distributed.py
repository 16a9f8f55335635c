"""Several processes, one model: the few torch.distributed pieces vqlib uses.

A run launched by PyTorch's ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in
each process's environment. ``vqlib.training.loop.fit`` then joins the process group (NCCL on CUDA,
gloo on the CPU), gives each process its slice of every global batch, and averages gradients with
DistributedDataParallel. Everything else that must agree across processes (the EMA codebook
statistics, data-driven initialisation, dead-code restarts, codebook usage counts) goes through
the collectives below, which are no-ops in a single process, so the same code runs both ways.

Metrics over a whole dataset are computed the same way: each process evaluates its ``shard`` and
the per-process sums (for example ``vqlib.core.metrics.code_counts``) are added with ``all_reduce_sum``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from vqlib.core.profile import default_device


def is_distributed() -> bool:
    """True when torch.distributed is initialised (a torchrun launch, or the user's own)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process (rank 0) logs, shows progress bars and writes checkpoints."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (a no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Overwrite ``t`` with rank 0's copy, in place (a no-op in a single process)."""
    if is_distributed():
        dist.broadcast(t, src=0)
    return t


def all_gather_object(obj: object) -> list:
    """Every process's ``obj`` (picklable, e.g. a dict of CPU tensors), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def shard(data: Dataset) -> Subset:
    """This process's share of ``data`` (every ``world_size()``-th example from ``rank()``), for
    evaluating over a whole dataset in parallel: sum per-process results with ``all_reduce_sum``."""
    return Subset(data, range(rank(), len(data), world_size()))  # type: ignore[arg-type]


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env() -> torch.device:
    """Join the torchrun process group if this process is part of one; return this process's device.

    With CUDA each process takes the GPU ``LOCAL_RANK`` and the NCCL backend; otherwise gloo.
    """
    device = default_device()
    if not launched_by_torchrun():
        return device
    try:
        env = {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    except (KeyError, ValueError) as err:
        raise RuntimeError("a torchrun launch must set RANK, WORLD_SIZE and LOCAL_RANK to integers, got "
                           f"{ {k: os.environ.get(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')} }") from err
    if not 0 <= env["RANK"] < env["WORLD_SIZE"]:
        raise RuntimeError(f"RANK={env['RANK']} is outside WORLD_SIZE={env['WORLD_SIZE']}")
    if device.type == "cuda":
        device = torch.device("cuda", env["LOCAL_RANK"])
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != env["WORLD_SIZE"]:
        raise RuntimeError(f"the process group has {dist.get_world_size()} processes but WORLD_SIZE says "
                           f"{env['WORLD_SIZE']}: every process must be started by the same launch")
    return device
