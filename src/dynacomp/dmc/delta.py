"""Retrofitted models as small deltas over their base model, and the deltas dynacomp ships.

A retrofit changes few weights (the attention projections, or fewer); the full checkpoint of a
135M-parameter model is still half a gigabyte. ``write_delta`` stores only the difference: each
changed matrix as a rank-``rank`` factorisation of its change (truncated SVD, bf16 factors), the
rows the policy reads its decisions from exactly (their change is concentrated, a low rank would
blur it), changed vectors in full, and the weights of modules the base does not have (an eviction
probe) exactly. ``load_delta`` rebuilds the model from the base and the delta, converts it with the
stored ``DMCConfig`` and restores the added modules. The report of ``write_delta`` says how much
of the change the factors keep; measure the rebuilt model before shipping it.

Shipped deltas live in ``dynacomp/dmc/shipped/NAME.safetensors`` and load by name
(``dynacomp.dmc.load("smollm2-135m-dms4")``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dynacomp.config import config_from_dict, to_dict
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.modeling import channels
from dynacomp.dmc.modeling.convert import convert_restoring
from dynacomp.io import atomic_path

SHIPPED = Path(__file__).with_name("shipped")


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.safetensors"))


def shipped(name: str | Path) -> Path | None:
    """The delta file of a shipped model name, or None for anything else."""
    path = SHIPPED / f"{name}.safetensors"
    return path if str(name) in shipped_names() else None


@torch.no_grad()
def write_delta(model: nn.Module, base: nn.Module, path: str | Path, base_name: str, rank: int = 32) -> dict:
    """Store ``model`` (converted, retrofitted) as a delta over ``base``; returns how much of the
    change (Frobenius norm) the stored delta keeps, and its size."""
    policy = model.dmc_config.policy
    base_state = base.state_dict()
    tensors, kept, total = {}, 0.0, 0.0
    for name, weight in model.state_dict().items():
        if not weight.dtype.is_floating_point:
            continue
        if name not in base_state:                 # a module the conversion added: few numbers, kept exactly
            tensors[f"{name}:added"] = weight.float().contiguous()
            continue
        change = weight.float() - base_state[name].float()
        if not change.any():
            continue
        norm = float(change.norm()) ** 2
        total += norm
        if change.dim() < 2:
            tensors[f"{name}:full"] = change.to(torch.bfloat16)
            kept += norm
            continue
        projection, kind = name.split(".")[-2:]
        rows = channels.decision_rows(model.config, policy).get(projection, []) if kind == "weight" else []
        if rows:
            tensors[f"{name}:rows"] = torch.tensor(rows)
            tensors[f"{name}:row_values"] = change[rows].to(torch.bfloat16)
            change[rows] = 0
        u, s, vh = torch.linalg.svd(change, full_matrices=False)
        r = min(rank, s.numel())
        tensors[f"{name}:u"] = (u[:, :r] * s[:r]).to(torch.bfloat16).contiguous()
        tensors[f"{name}:v"] = vh[:r].to(torch.bfloat16).contiguous()
        kept += float((s[:r] ** 2).sum()) + (norm - float(change.norm()) ** 2)
    metadata = {"base": base_name, "dmc_config": json.dumps(to_dict(model.dmc_config)), "rank": str(rank)}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {"kept_change": kept / total if total else 1.0, "bytes": Path(path).stat().st_size, "tensors": len(tensors)}


def load_delta(path: str | Path, dtype: torch.dtype = torch.float32, **overrides):
    """``(model, tokenizer)``: the base model with the delta applied, converted for its policy;
    ``overrides`` replace DMCConfig fields."""
    model, tokenizer, config, added = load_delta_base(path, dtype)
    return convert_restoring(model, replace(config, **overrides), added, path), tokenizer


def load_delta_base(path: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, dmc_config, added)``: the base model with the delta applied, not
    converted (as ``dynacomp.dmc.load_base`` gives a saved checkpoint), and the tensors of the
    modules only the converted model has."""
    from dynacomp.models import load_causal_lm

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    model, tokenizer = load_causal_lm(metadata["base"], dtype=dtype)
    state, added = model.state_dict(), {}
    with torch.no_grad():
        for key, value in tensors.items():
            name, part = key.rsplit(":", 1)
            if part == "added":
                added[name] = value.to(dtype)
                continue
            target = state[name]
            if part == "full":
                target += value.to(target.dtype)
            elif part == "u":
                target += (value.float() @ tensors[f"{name}:v"].float()).to(target.dtype)
            elif part == "rows":
                target[value] += tensors[f"{name}:row_values"].to(target.dtype)
    return model.eval(), tokenizer, config_from_dict(DMCConfig, json.loads(metadata["dmc_config"])), added
