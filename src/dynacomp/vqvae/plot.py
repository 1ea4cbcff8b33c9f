"""Code usage and reconstruction error over training, read from runs' ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynacomp.io import figure


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The metrics lines a training run wrote (``train`` writes ``metrics.jsonl``)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run} a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_usage(runs: dict[str, list[dict[str, Any]]], path: str | Path, note: str = "") -> None:
    """Two panels over steps: normalised code usage per training batch, and reconstruction MSE;
    one line per run; ``note`` (command, machine, date) goes under the plot."""
    with figure(path, ncols=2, figsize=(11, 4)) as (fig, (usage, recon)):
        for name, records in runs.items():
            steps = [r["step"] for r in records]
            usage.plot(steps, [r["usage"] for r in records], label=name)
            recon.plot(steps, [r["recon"] for r in records], label=name)
        usage.set(xlabel="step", ylabel="code usage H / log K (per batch)", ylim=(0, 1.02), title="codebook usage")
        recon.set(xlabel="step", ylabel="log-mel MSE (normalised)", yscale="log", title="reconstruction (train batches)")
        usage.legend(fontsize=8)
        usage.grid(alpha=0.3)
        recon.grid(alpha=0.3)
        if note:
            fig.text(0.01, -0.02, note, fontsize=7, va="top", wrap=True)
