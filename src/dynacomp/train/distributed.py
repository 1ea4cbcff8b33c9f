"""Processes and devices: who am I, the process group, and wrapping the model (DDP or FSDP2).

Runs launched by ``torchrun`` (``python -m torch.distributed.run --nproc_per_node N ...``) read
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment; a plain ``python`` run is rank 0
of 1. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``: from the process group if there is one, else from torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0, the one process that writes logs and checkpoints."""
    return world_info()[0] == 0


def resolve_strategy(strategy: str, world_size: int) -> str:
    if strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    if strategy == "single" and world_size > 1:
        raise ValueError(f"strategy 'single' with {world_size} processes would train {world_size} separate "
                         "copies into one folder: use strategy 'ddp', 'fsdp' or 'auto'")
    if strategy not in ("single", "ddp", "fsdp"):
        raise ValueError(f"unknown strategy {strategy!r}; choose auto, single, ddp or fsdp")
    return strategy


def setup(strategy: str) -> tuple[str, int, int, torch.device]:
    """Resolve ``strategy``, start the process group it needs, pick the device.

    Returns ``(strategy, rank, world_size, device)``. The process group is left initialised for
    the caller (evaluation after training may need it); a ``ddp``/``fsdp`` run without torchrun
    gets a one-process group.
    """
    _, world_size = world_info()
    strategy = resolve_strategy(strategy, world_size)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if strategy != "single" and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world_size = world_info()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return strategy, rank, world_size, device


def _check_same_init(model: nn.Module, device: torch.device) -> None:
    """FSDP keeps each rank's own slice of its own model: all ranks must start from the same one."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point() and not t.is_meta]
    if not tensors:
        return
    fingerprint = torch.stack([t.detach().double().sum() for t in tensors]).to(device)
    low, high = fingerprint.clone(), fingerprint.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("the model differs between ranks before FSDP sharding: build it the same way on "
                           "every rank (call seed_everything(seed) before constructing it)")


def wrap_model(model: nn.Module, strategy: str, device: torch.device, *,
               fsdp_units: Iterable[nn.Module] = (), find_unused_parameters: bool = False) -> nn.Module:
    """Place ``model`` on ``device`` and wrap it for ``strategy``; returns what the loss should call.

    ``ddp``: ``DistributedDataParallel`` (rank 0's weights are broadcast to all ranks).
    ``fsdp``: FSDP2 ``fully_shard`` applied in place to each of ``fsdp_units``, then to the root;
    the shards are moved to ``device`` afterwards, so the full model need not fit one device.
    """
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        _check_same_init(model, device)
        for unit in fsdp_units:
            fully_shard(unit)
        fully_shard(model)
        return model.to(device)
    model = model.to(device)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused_parameters)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The task's own module inside a DDP wrapper (an FSDP2 module is its own module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_mean(values: list[float], device: torch.device) -> list[float]:
    """Average a list of floats over ranks (identity in one process)."""
    if not values or not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` in one process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
