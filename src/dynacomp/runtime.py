"""Where and in what precision a model runs: the ``--device`` and ``--dtype`` options, and what a
timer or a memory reading must know of the device."""

from __future__ import annotations

import resource
from typing import Literal

import torch

from dynacomp.errors import Failure

Device = Literal["cpu", "cuda"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Dtype = Literal[tuple(DTYPES)]


def check_device(device: str) -> None:
    """Refuse a device this machine lacks; configs call it on creation, so the one-line error
    comes before anything loads."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise Failure("CUDA is not available on this machine: pass --device cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``, so that a clock read next counts it: CUDA runs
    asynchronously, CPU work is done when its call returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory on ``device``: the CUDA allocator's peak on a GPU (the process's
    resident memory there is mostly the CUDA runtime), the resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
