"""The one training loop: AdamW with per-group lr multipliers, warm-up + cosine, clipping, bf16
autocast, atomic checkpoints with exact resume, JSONL metrics, single process / DDP / FSDP2.

A system supplies a *task* (the model, a deterministic batch function and a loss) and a
``TrainConfig``; ``train`` does the rest::

    result = train(MyTask(), TrainConfig(steps=2000, lr=1e-3), Path("runs/x"))

The same script runs on several processes with ``torchrun --nproc_per_node N script.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from dynacomp.config import field, to_dict
from dynacomp.console import progress
from dynacomp.errors import Interrupted
from dynacomp.io import write_text
from dynacomp.train import checkpoint as ckpt
from dynacomp.train.budget import RunLength
from dynacomp.train.distributed import (
    all_mean,
    barrier,
    broadcast_from_main,
    gather_to_main,
    resolve_strategy,
    setup,
    unwrap,
    world_info,
    wrap_model,
)

# Without a progress bar (stderr is a log file, as under nohup or a batch scheduler), a status line
# on stderr at most this often, so a long run is not silent.
STATUS_EVERY_S = 60.0


@dataclass
class TrainConfig:
    steps: int = field(1000, help="optimizer steps in the whole run (unless a budget is given)")
    budget_flops: float = field(0, help="train until the task has counted this many FLOPs, the schedule "
                                "spanning them, instead of for steps (0: no FLOP budget; see dynacomp.train.budget)")
    budget_minutes: float = field(0, help="train for this many minutes of steps at the throughput measured over "
                                  "the first steps, instead of for steps (0: no time budget)")
    lr: float = field(3e-4, help="peak learning rate (each param group multiplies it by its lr_mult)")
    min_lr_ratio: float = field(0.1, help="final learning rate as a fraction of lr")
    warmup_steps: int = field(100, help="steps of linear warm-up")
    weight_decay: float = field(0.1, help="AdamW weight decay (default groups: none on 1-D parameters)")
    beta1: float = field(0.9, help="AdamW beta1")
    beta2: float = field(0.95, help="AdamW beta2")
    grad_clip: float = field(1.0, help="clip the global gradient norm to this (0: no clipping)")
    grad_accum: int = field(1, help="micro-batches per optimizer step")
    bf16: bool = field(False, help="run forward passes under bfloat16 autocast")
    seed: int = field(0, help="random seed (rank r uses seed + r)")
    checkpoint_every: int = field(200, help="write a checkpoint every this many steps (0: only at the end)")
    keep_checkpoints: int = field(2, help="keep this many newest checkpoints (0: keep all)")
    log_every: int = field(10, help="write a metrics line every this many steps")
    strategy: Literal["auto", "single", "ddp", "fsdp"] = field(
        "auto", help="auto: ddp under torchrun with several processes, else single")
    tensorboard: bool = field(False, help="also write TensorBoard events to out_dir/tensorboard")
    schedule: Literal["cosine", "constant", "linear"] = field("cosine", help="learning-rate decay after warm-up")

    def __post_init__(self) -> None:
        if self.grad_accum < 1 or self.log_every < 1 or self.steps < 0 or self.warmup_steps < 0:
            raise ValueError("TrainConfig: grad_accum and log_every must be >= 1, steps and warmup_steps >= 0")
        if self.budget_flops < 0 or self.budget_minutes < 0 or (self.budget_flops and self.budget_minutes):
            raise ValueError(f"TrainConfig: give one budget, --budget-flops or --budget-minutes, >= 0 "
                             f"(got {self.budget_flops} and {self.budget_minutes})")


class TrainTask(Protocol):
    """What a system hands to ``train``. Required: ``model``, ``batch``, ``loss``.

    Optional members, used when present:

    - ``param_groups(model) -> list[dict]``: AdamW groups, each ``{'params': [...], 'lr_mult': float,
      'weight_decay': float}`` (both keys optional). Default: weight decay on parameters with
      ``ndim >= 2`` only. Every parameter that requires grad must be in a group.
    - ``on_step_start(step, model, trainer)``: called before each step (0-based) with the
      unwrapped model and the ``Trainer``; e.g. a temperature schedule or codebook re-estimation.
    - ``state_dict() / load_state_dict(state)``: task state kept in checkpoints, per rank; must
      hold only tensors and plain Python values (it is read with ``weights_only=True``).
    - ``fsdp_units(model) -> list[nn.Module]``: submodules to shard separately under FSDP
      (e.g. transformer blocks); the root is always sharded last. Default: the root only.
    - ``tokens_per_step: int``: global tokens per optimizer step, to log ``tokens_per_s``.
    - a ``flops`` entry in ``loss``'s metrics: the FLOPs of that micro-batch on this rank (forward
      and backward). The loop sums them over micro-batches and ranks, logs the run's total as
      ``flops`` and spends ``budget_flops`` with them.
    - ``find_unused_parameters: bool``: passed to DDP for models that skip parameters.
    - ``strategies: tuple[str, ...]``: the strategies the task can train under (default: all),
      e.g. ``("single", "ddp")`` for a model that needs whole parameters on every rank.
    """

    model: nn.Module

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> Any:
        """This rank's micro-batch ``micro`` of step ``step``: a pure function of its arguments
        (that is what makes a resumed run see the same data). Tensors in it (also inside dicts,
        lists, tuples) are moved to the device by the loop."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and metrics to log (the same keys on every rank). Call ``model(...)``:
        under DDP ``model`` is the wrapper, and only its forward synchronises gradients."""
        ...


@dataclass
class Trainer:
    """The loop's live objects, handed to ``task.on_step_start``."""

    config: TrainConfig
    out_dir: Path
    strategy: str
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module       # what the loss calls: DDP wrapper, FSDP module or the plain model
    module: nn.Module      # the task's own module (unwrapped)
    optimizer: torch.optim.Optimizer
    length: RunLength      # the step count or budget, and what has been spent of it
    step: int = 0          # optimizer steps completed


@dataclass
class TrainResult:
    step: int                    # optimizer steps completed
    metrics: dict[str, Any]      # the last metrics line
    wall_time: float             # seconds this call took
    checkpoint: Path | None      # the final checkpoint folder


def default_param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on matrices and embeddings, none on 1-D parameters (norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(task: Any, module: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    make = getattr(task, "param_groups", None)
    groups = []
    for group in (make(module) if make else default_param_groups(module)):
        group = {"lr_mult": 1.0, "weight_decay": config.weight_decay, **group}
        group["params"] = [p for p in group["params"] if p.requires_grad]
        if group["params"]:
            groups.append(group)
    covered = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in covered]
    if missing:
        raise ValueError(f"parameters {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} require grad "
                         "but are in no param group: add them to a group or set requires_grad=False")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             weight_decay=config.weight_decay)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


@contextlib.contextmanager
def _grad_sync(model: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
        return
    if strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    yield


def save(trainer: Trainer, task: Any) -> Path:
    """Write a checkpoint of the current step (collective: call on every rank; rank 0 writes)."""
    # Imported here: torch.distributed.checkpoint takes ~1 s to import, and most importers of
    # dynacomp.train only want TrainConfig.
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets everything, on CPU
    model_state = get_model_state_dict(trainer.module, options=full)
    optimizer_state = get_optimizer_state_dict(trainer.module, trainer.optimizer, options=full)
    task_state = task.state_dict() if hasattr(task, "state_dict") else None
    per_rank = gather_to_main({"rng": ckpt.rng_state(), "task": task_state})
    folder = ckpt.checkpoints_dir(trainer.out_dir) / f"step_{trainer.step:06d}"
    if trainer.rank == 0:
        trainer_state = {"format": ckpt.FORMAT, "step": trainer.step, "world_size": trainer.world_size,
                         "strategy": trainer.strategy, "config": to_dict(trainer.config),
                         "rng": [s["rng"] for s in per_rank], "task": [s["task"] for s in per_rank],
                         "run_length": trainer.length.state_dict()}
        ckpt.save_checkpoint(folder, model_state, optimizer_state, trainer_state)
        ckpt.prune_checkpoints(trainer.out_dir, trainer.config.keep_checkpoints)
    return folder


def load(trainer: Trainer, task: Any, folder: Path, *, verify: bool = True) -> int:
    """Restore model, optimizer, RNG and task state from ``folder`` (on every rank); returns its step."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model_state, optimizer_state, state = ckpt.read_checkpoint(folder, verify=verify)
    set_model_state_dict(trainer.module, model_state, options=StateDictOptions(full_state_dict=True))
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    set_optimizer_state_dict(trainer.module, trainer.optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True))
    for group, settings in zip(trainer.optimizer.param_groups, fresh):
        group.update(settings)  # hyperparameters come from the current config, the moments from the file
    same_world = state["world_size"] == trainer.world_size
    if trainer.rank == 0:
        # An option added after the checkpoint was written had its default then.
        old, new = {**to_dict(TrainConfig()), **state["config"]}, to_dict(trainer.config)
        changed = [f"{k}: {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v]
        if changed:
            warnings.warn(f"resuming {folder} with a changed config ({'; '.join(changed)})", stacklevel=3)
        if not same_world:
            warnings.warn(f"{folder} was written by {state['world_size']} processes, resuming with "
                          f"{trainer.world_size}: weights and optimizer carry over, but data order and "
                          "random streams will differ from an uninterrupted run", stacklevel=3)
    if same_world:
        ckpt.set_rng_state(state["rng"][trainer.rank])
    else:
        ckpt.seed_everything(trainer.config.seed + trainer.rank + state["step"])
    if hasattr(task, "load_state_dict") and state["task"][0] is not None:
        task.load_state_dict(state["task"][trainer.rank if same_world else 0])
    if "run_length" in state:   # absent from checkpoints written before budgets existed
        trainer.length.load_state_dict(state["run_length"])
    trainer.step = state["step"]
    return trainer.step


def _find_resume_point(out_dir: Path, resume: bool) -> tuple[str | None, str | None]:
    """Rank 0's answer ``(folder, error)``, made on rank 0 and broadcast so all ranks agree."""
    ckpt.clean_leftovers(out_dir)
    if not resume:
        latest = ckpt.latest_checkpoint(out_dir)
        if latest is not None:
            # Starting at step 0 beside newer checkpoints would soon prune the new ones as "old".
            return None, (f"{out_dir} already holds checkpoints (latest {latest.name}) and resume=False: "
                          "use a new out_dir, delete its checkpoints folder, or resume")
        return None, None
    try:
        folder = ckpt.resume_checkpoint(out_dir)
    except ckpt.CheckpointError as err:
        return None, str(err)
    return (str(folder) if folder else None), None


def _truncate_metrics(path: Path, step: int) -> dict[str, Any]:
    """Keep the lines of steps <= ``step`` (a resumed run rewrites the rest); return the last one."""
    kept, last = [], {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", math.inf) <= step:
                kept.append(line)
                last = record
    write_text(path, "".join(line + "\n" for line in kept))
    return last


def _open_tensorboard(out_dir: Path, start_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)


def train(task: TrainTask, config: TrainConfig, out_dir: str | Path, *, resume: bool = True) -> TrainResult:
    """Train ``task.model`` for ``config.steps`` optimizer steps, or until its budget is spent
    (``dynacomp.train.budget``), writing to ``out_dir``.

    With ``resume`` (the default) a run continues from the latest checkpoint in
    ``out_dir/checkpoints`` and reproduces the data order, random streams and so the losses of an
    uninterrupted run. Writes ``metrics.jsonl`` (and checkpoints) from rank 0 only. Under
    torchrun it initialises the process group and leaves it initialised on return.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    requested = resolve_strategy(config.strategy, world_info()[1])
    allowed = getattr(task, "strategies", (requested,))
    if requested not in allowed:   # before any process group starts
        raise ValueError(f"{type(task).__name__} trains under strategy {' or '.join(allowed)}, not {requested}")
    strategy, rank, world_size, device = setup(config.strategy)
    ckpt.seed_everything(config.seed + rank)
    module = task.model
    units = task.fsdp_units(module) if strategy == "fsdp" and hasattr(task, "fsdp_units") else ()
    model = wrap_model(module, strategy, device, fsdp_units=units,
                       find_unused_parameters=getattr(task, "find_unused_parameters", False))
    module = unwrap(model)
    optimizer = build_optimizer(task, module, config)
    length = RunLength(config)
    trainer = Trainer(config, out_dir, strategy, rank, world_size, device, model, module, optimizer, length)

    folder, error = broadcast_from_main(_find_resume_point(out_dir, resume) if rank == 0 else None)
    if error:
        raise (ckpt.CheckpointError if resume else FileExistsError)(error)
    final_checkpoint = Path(folder) if folder else None
    if final_checkpoint:
        load(trainer, task, final_checkpoint, verify=False)  # rank 0 verified it a moment ago
        if rank == 0:
            print(f"dynacomp.train: resuming from {final_checkpoint} (step {trainer.step})", file=sys.stderr)
    step = trainer.step

    metrics_path = out_dir / "metrics.jsonl"
    last_metrics: dict[str, Any] = {}
    metrics_file = writer = None
    if rank == 0:
        last_metrics = _truncate_metrics(metrics_path, step)
        metrics_file = open(metrics_path, "a")
        writer = _open_tensorboard(out_dir, step) if config.tensorboard else None
    bar = progress(total=length.steps, initial=step, desc="train", **({"disable": True} if rank else {}))
    on_step_start = getattr(task, "on_step_start", None)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    log_time, log_step = time.perf_counter(), step
    status_time = log_time
    try:
        while not length.done(step):
            step_start = time.perf_counter()
            if on_step_start is not None:
                on_step_start(step, module, trainer)
            lr = config.lr * length.lr_multiplier(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]

            loss_sum = torch.zeros((), device=device)
            metric_sums: dict[str, float] = {}
            for micro in range(config.grad_accum):
                batch = _to_device(task.batch(step, micro, rank, world_size), device)
                with _grad_sync(model, strategy, micro == config.grad_accum - 1):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                        loss, metrics = task.loss(model, batch)
                    (loss / config.grad_accum).backward()
                loss_sum += loss.detach().float()
                for key, value in metrics.items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step = trainer.step = step + 1
            step_flops = metric_sums.pop("flops", None)
            if config.budget_flops and step_flops is None:
                raise ValueError(f"budget_flops needs a task that counts FLOPs (a 'flops' entry in its loss "
                                 f"metrics); {type(task).__name__} has none: give --steps or --budget-minutes")
            counts_flops = step_flops is not None
            step_flops = round(all_mean([step_flops], device)[0] * world_size) if counts_flops else 0
            length.count(step, step_flops, time.perf_counter() - step_start)
            done = length.done(step)
            bar.total = length.steps
            bar.update(1)

            if step % config.log_every == 0 or done:
                keys = sorted(metric_sums)
                values = all_mean([loss_sum.item(), *(metric_sums[k] for k in keys)], device)
                values = [v / config.grad_accum for v in values]
                if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                    grad_norm = grad_norm.full_tensor()
                now = time.perf_counter()
                last_metrics = {"step": step, "loss": values[0], **dict(zip(keys, values[1:])), "lr": lr,
                                "grad_norm": grad_norm.item(), "steps_per_s": (step - log_step) / (now - log_time),
                                "elapsed_s": now - t0}
                if counts_flops:
                    last_metrics["flops"] = length.flops
                if hasattr(task, "tokens_per_step"):
                    last_metrics["tokens_per_s"] = task.tokens_per_step * last_metrics["steps_per_s"]
                log_time, log_step = now, step
                if rank == 0:
                    metrics_file.write(json.dumps(last_metrics) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        for key, value in last_metrics.items():
                            if key != "step" and isinstance(value, (int, float)):
                                writer.add_scalar(key, value, step)
                    shown = {k: f"{v:.4g}" for k, v in last_metrics.items() if k not in ("step", "elapsed_s", "steps_per_s")}
                    bar.set_postfix(shown, refresh=False)
                    if bar.disable and now - status_time >= STATUS_EVERY_S:
                        print(f"dynacomp.train: step {step}/{length.total_text()}, {last_metrics['steps_per_s']:.3g} steps/s, "
                              + ", ".join(f"{k} {v}" for k, v in shown.items()), file=sys.stderr, flush=True)
                        status_time = now
                if not math.isfinite(values[0]):
                    raise FloatingPointError(f"loss is {values[0]} at step {step}; resume from the last checkpoint "
                                             "with a lower lr or grad_clip, or look for bad data")

            if (config.checkpoint_every > 0 and step % config.checkpoint_every == 0) or done:
                final_checkpoint = save(trainer, task)
    except KeyboardInterrupt as err:   # checkpoints are written atomically: the last complete one stands
        last = ckpt.latest_checkpoint(out_dir)
        kept = (f"{last} is kept, and the same command (the same out_dir) resumes from it" if last
                else f"no checkpoint was written yet (checkpoint_every={config.checkpoint_every})")
        raise Interrupted(f"training stopped at step {step} of {length.total_text()}; {kept}") from err
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    barrier()  # the final checkpoint is on disk before any rank returns
    return TrainResult(step=step, metrics=last_metrics, wall_time=time.perf_counter() - t0, checkpoint=final_checkpoint)
