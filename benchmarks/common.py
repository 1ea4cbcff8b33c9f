"""What every benchmark's results page states: the machine it ran on, and paths as the repository sees them."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU's model name where Linux tells it, else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line naming the hardware and software a result was measured on, and the load at the
    start (timings on a shared machine are noisy)."""
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {gpu}, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the start")


def repo_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, so a record names no folder of
    the machine it ran on; a path outside stays as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def read_bandwidth(device: str = "cpu", gib: float = 2.0, repeats: int = 7) -> float:
    """Bytes per second of a streaming read (a sum) of a buffer far larger than the caches and
    weights measured here, median of ``repeats``: the memory floor a decode step is held to."""
    buffer = torch.ones(int(gib * 2**30) // 4, device=device)
    seconds = []
    for _ in range(repeats + 1):                 # the first read also faults the pages in
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        buffer.sum().item()
        seconds.append(time.perf_counter() - start)
    return buffer.numel() * buffer.element_size() / statistics.median(seconds[1:])
