"""Checkpoints that are complete or absent, and the random state that makes resume exact.

A checkpoint is a folder ``out_dir/checkpoints/step_000200/`` holding

- ``model.safetensors``: the full (unsharded) model state dict,
- ``optimizer.pt``: the full optimizer state dict, keyed by parameter name,
- ``trainer.pt``: step, config, each rank's RNG states and task state,
- ``manifest.json``: the sha256 and size of each file above, written last.

The folder is written under a temporary name and renamed when complete, so a killed run leaves
either the whole folder or none of it (plus a hidden ``.step_*.tmp`` leftover, removed on the next
start). Reading verifies the manifest first and only ever uses safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dynacomp.errors import Failure
from dynacomp.io import atomic_path

FORMAT = 1
MODEL, OPTIMIZER, TRAINER, MANIFEST = "model.safetensors", "optimizer.pt", "trainer.pt", "manifest.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(Failure):
    """A checkpoint that is incomplete, corrupt or unreadable; it was not loaded."""


# ---------------------------------------------------------------- random state

def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- finding checkpoints

def checkpoints_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def step_folders(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``step_*`` folder under ``out_dir/checkpoints``, oldest first."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint folder (not verified: see ``verify_checkpoint``), or None."""
    folders = step_folders(out_dir)
    return folders[-1][1] if folders else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Check ``folder`` against its manifest; return the manifest or raise ``CheckpointError``."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it is incomplete") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST} ({err})") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"checkpoint {folder}: {name} has {size} bytes, the manifest says "
                                  f"{expected['bytes']} (truncated or overwritten)")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} does not match its sha256 in {MANIFEST} (corrupt)")
    return manifest


def resume_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run in ``out_dir`` resumes from: the latest one, verified; None if there is none.

    A corrupt latest checkpoint is refused, not skipped. Folders only appear by an atomic rename
    once complete, so a kill can never produce one; a bad ``step_*`` folder means the disk or a
    person changed it afterwards. Falling back silently would retrain steps, overwrite metrics and
    soon prune the evidence, so the decision is left to a person: the message names the folder
    and the older checkpoint that moving it aside would resume from.
    """
    folders = step_folders(out_dir)
    if not folders:
        return None
    folder = folders[-1][1]
    try:
        verify_checkpoint(folder)
    except CheckpointError as err:
        previous = f"the previous checkpoint {folders[-2][1]}" if len(folders) > 1 else "step 0 (no older checkpoint)"
        raise CheckpointError(f"{err}. Refusing to resume from it. To resume from {previous}, move {folder} "
                              "out of the checkpoints folder and run again; to start over, use a new out_dir.") from None
    return folder


# ---------------------------------------------------------------- writing

def _for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no storage (tied weights are stored twice)."""
    out, seen = {}, set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"model state {key!r} is a {type(value).__name__}, not a tensor: safetensors cannot store it")
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def save_checkpoint(folder: str | os.PathLike, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], trainer_state: dict[str, Any]) -> Path:
    """Write a complete checkpoint folder atomically (call on rank 0 only)."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(_for_safetensors(model_state), str(tmp / MODEL), metadata={"format": "pt"})
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(trainer_state, tmp / TRAINER)
        files = {}
        for name in (MODEL, OPTIMIZER, TRAINER):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {"format": FORMAT, "step": trainer_state.get("step"), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _remove(folder: Path) -> None:
    """Rename to a hidden name first, so a kill mid-delete never leaves a half ``step_*`` folder."""
    hidden = folder.with_name(f".{folder.name}.deleting.tmp")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0`` keeps all)."""
    if keep > 0:
        for _, folder in step_folders(out_dir)[:-keep]:
            _remove(folder)


def clean_leftovers(out_dir: str | os.PathLike) -> None:
    """Remove hidden temporary folders left by a run killed while writing or deleting."""
    root = checkpoints_dir(out_dir)
    if root.is_dir():
        for path in root.glob(".step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- reading

def read_checkpoint(folder: str | os.PathLike, *, verify: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(model_state, optimizer_state, trainer_state)`` of a checkpoint, on CPU, verified first
    unless ``verify=False`` (for a folder that was just verified)."""
    folder = Path(folder)
    if verify:
        verify_checkpoint(folder)
    try:
        model_state = load_file(str(folder / MODEL), device="cpu")
        optimizer_state = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
        trainer_state = torch.load(folder / TRAINER, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to decode means: not loaded
        raise CheckpointError(f"checkpoint {folder} passed its checksums but cannot be read: {err}") from err
    return model_state, optimizer_state, trainer_state


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> Path:
    """Load the weights of a checkpoint into a plain (unwrapped) ``model``; returns the folder used.

    ``path`` is a checkpoint folder, or a training ``out_dir`` (its latest checkpoint is used).
    """
    path = Path(path)
    folder = path if (path / MANIFEST).exists() or _STEP_RE.match(path.name) else latest_checkpoint(path)
    if folder is None:
        raise CheckpointError(f"no checkpoint under {checkpoints_dir(path)}: train first, or pass a checkpoint folder")
    verify_checkpoint(folder)
    model.load_state_dict(load_file(str(folder / MODEL), device="cpu"), strict=strict)
    return folder
