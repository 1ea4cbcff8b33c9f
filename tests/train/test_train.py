"""dynacomp.train: schedule, param groups, checkpoints (atomic, verified, pruned), exact resume
after SIGKILL, and 2-process torchrun runs (DDP and FSDP2) on CPU with gloo."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynacomp.train import (
    CheckpointError,
    TrainConfig,
    default_param_groups,
    latest_checkpoint,
    load_trained_run,
    load_weights,
    lr_at,
    train,
    verify_checkpoint,
)
from dynacomp.train.loop import _truncate_metrics
from dynacomp.train.schedule import decay_progress

TOY = Path(__file__).with_name("toy_task.py")
_spec = importlib.util.spec_from_file_location("dynacomp_train_toy_task", TOY)
toy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = toy
_spec.loader.exec_module(toy)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DYNACOMP_PROGRESS": "0"}
TIMING = {"steps_per_s", "tokens_per_s", "elapsed_s"}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def flags(config: TrainConfig) -> list[str]:
    return [a for k, v in vars(config).items() for a in (f"--{k.replace('_', '-')}", str(v))
            if not isinstance(v, bool)] + [f"--{'' if config.bf16 else 'no-'}bf16"]


def script(out: Path, config: TrainConfig, *extra: str) -> list[str]:
    return [str(TOY), "--out", str(out), *flags(config), *extra]


def torchrun(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def small(**kw) -> TrainConfig:
    base = dict(steps=12, lr=1e-2, warmup_steps=2, checkpoint_every=4, log_every=1, strategy="single")
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- pure pieces

def test_lr_at_warmup_then_decay():
    c = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0) and lr_at(10, c) == 1.0
    assert lr_at(60, c) == pytest.approx(0.55) and lr_at(110, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    cosine = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    assert lr_at(35, c) > 0.1 + 0.9 * 0.75  # cosine stays above the straight line early on
    linear = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="linear")
    assert lr_at(35, linear) == pytest.approx(0.1 + 0.9 * 0.75) and lr_at(110, linear) == pytest.approx(0.1)
    assert lr_at(100, TrainConfig(steps=110, warmup_steps=10, schedule="constant")) == 1.0
    assert lr_at(0, TrainConfig(steps=10, warmup_steps=0)) == 1.0


def test_truncate_metrics_drops_later_and_partial_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 1}\n{"step": 4, "lo')
    assert _truncate_metrics(path, 2) == {"step": 2, "loss": 2}
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_param_groups_lr_mult_and_default_decay(tmp_path):
    task = toy.ToyTask()
    groups = default_param_groups(task.model)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in task.model.parameters()}

    frozen = task.model.inp.weight.detach().clone()
    m = task.model
    task.param_groups = lambda model: [
        {"params": [model.inp.weight], "lr_mult": 0.0, "weight_decay": 0.0},
        {"params": [p for n, p in model.named_parameters() if n != "inp.weight"], "lr_mult": 2.0},
    ]
    out_before = m.out.weight.detach().clone()
    result = train(task, small(steps=3, checkpoint_every=0), tmp_path / "run")
    assert torch.equal(m.inp.weight, frozen) and not torch.equal(m.out.weight, out_before)
    assert result.step == 3 and result.checkpoint.name == "step_000003"

    task = toy.ToyTask()
    task.param_groups = lambda model: [{"params": [model.inp.weight]}]
    with pytest.raises(ValueError, match="in no param group"):
        train(task, small(steps=1), tmp_path / "missing")


def test_bf16_autocast_and_grad_accum(tmp_path):
    result = train(toy.ToyTask(), small(steps=4, bf16=True, grad_accum=2), tmp_path)
    assert result.step == 4 and math.isfinite(result.metrics["loss"]) and result.metrics["grad_norm"] > 0


def test_a_task_refuses_a_strategy_it_cannot_train_under(tmp_path):
    task = toy.ToyTask()
    task.strategies = ("single", "ddp")
    with pytest.raises(ValueError, match="ToyTask trains under strategy single or ddp, not fsdp"):
        train(task, small(steps=1, strategy="fsdp"), tmp_path)


def test_tensorboard_without_package_says_how_to_install(tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        train(toy.ToyTask(), small(steps=2, tensorboard=True), tmp_path)
        assert any((tmp_path / "tensorboard").iterdir())
    else:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            train(toy.ToyTask(), small(steps=2, tensorboard=True), tmp_path)


# ---------------------------------------------------------------- checkpoints

def test_without_a_progress_bar_a_run_prints_status_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dynacomp.train.loop.STATUS_EVERY_S", 0.0)
    monkeypatch.setenv("DYNACOMP_PROGRESS", "0")
    train(toy.ToyTask(), small(steps=4, log_every=2), tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dynacomp.train: step")]
    assert [line.split(",")[0] for line in lines] == ["dynacomp.train: step 2/4", "dynacomp.train: step 4/4"]
    assert "loss" in lines[-1] and "lr" in lines[-1]


def test_checkpoints_are_complete_pruned_and_verified(tmp_path):
    out = tmp_path / "run"
    result = train(toy.ToyTask(dropout=0.1, jitter=0.01), small(), out)
    folders = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert folders == ["step_000008", "step_000012"] and result.checkpoint == out / "checkpoints" / "step_000012"
    manifest = verify_checkpoint(result.checkpoint)
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "trainer.pt"}
    state = torch.load(result.checkpoint / "trainer.pt", weights_only=True)
    assert state["step"] == 12 and state["world_size"] == 1 and state["task"][0]["ema"] > 0
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))

    fresh = toy.ToyModel()
    assert load_weights(fresh, out) == result.checkpoint
    saved = load_file(str(result.checkpoint / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())

    # Resuming a finished run trains nothing and leaves the metrics alone.
    again = train(toy.ToyTask(dropout=0.1, jitter=0.01), small(), out)
    assert again.step == 12 and again.metrics["loss"] == result.metrics["loss"] and len(metrics(out)) == 12

    # Leftovers of a write killed midway are ignored and cleaned up.
    (out / "checkpoints" / ".step_000016.x1y2.tmp" / "step_000016").mkdir(parents=True)
    assert train(toy.ToyTask(dropout=0.1, jitter=0.01), small(), out).step == 12
    assert latest_checkpoint(out).name == "step_000012" and not list((out / "checkpoints").glob(".*"))

    with pytest.raises(FileExistsError, match="resume=False"):
        train(toy.ToyTask(), small(), out, resume=False)


@dataclass
class ToyConfig:
    dropout: float = 0.0


def test_load_trained_run_builds_the_model_from_its_record(tmp_path):
    out = tmp_path / "run"
    result = train(toy.ToyTask(), small(steps=4), out)
    (out / "toy.json").write_text(json.dumps({"model": {"dropout": 0.25}, "other": None, "note": "kept"}))
    loaded = load_trained_run(out, "toy.json", "make toy", {"model": ToyConfig, "other": ToyConfig},
                              lambda record: toy.ToyModel(record["model"].dropout))
    assert loaded.record == {"model": ToyConfig(0.25), "other": None, "note": "kept"}
    assert loaded.checkpoint == result.checkpoint and not loaded.model.training
    with pytest.raises(FileNotFoundError, match="make toy"):
        load_trained_run(out, "missing.json", "make toy", {}, lambda record: toy.ToyModel())


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest"])
def test_corrupt_latest_checkpoint_is_refused(tmp_path, damage):
    out = tmp_path / "run"
    train(toy.ToyTask(), small(steps=8), out)
    latest = out / "checkpoints" / "step_000008"
    weights = latest / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (latest / "manifest.json").unlink()
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as err:
        train(toy.ToyTask(), small(steps=8), out)
    message = str(err.value)
    assert str(latest) in message and "step_000004" in message and "move" in message
    with pytest.raises(CheckpointError):
        load_weights(toy.ToyModel(), out)
    assert (out / "metrics.jsonl").read_text() == before  # nothing was touched


# ---------------------------------------------------------------- budgets

def kill_after(out: Path, step: int) -> None:
    """What a kill leaves of a finished run: its checkpoints up to ``step`` (resume truncates the metrics)."""
    for folder in (out / "checkpoints").iterdir():
        if int(folder.name.removeprefix("step_")) > step:
            shutil.rmtree(folder)


def test_a_budget_needs_one_value_and_a_flop_budget_a_task_that_counts(tmp_path):
    for bad in ({"budget_flops": -1.0}, {"budget_minutes": -1.0}, {"budget_flops": 1e6, "budget_minutes": 1.0}):
        with pytest.raises(ValueError, match="give one budget"):
            small(**bad)
    with pytest.raises(ValueError, match="'flops' entry"):
        train(toy.ToyTask(), small(budget_flops=1e6), tmp_path)


def test_flop_budget_decays_over_the_flops_and_stops_once_spent(tmp_path):
    config = small(budget_flops=60_000, warmup_steps=3)
    result = train(toy.ToyTask(count_flops=True), config, tmp_path)
    lines = metrics(tmp_path)
    spent = [0] + [r["flops"] for r in lines]   # before each step
    assert spent[-2] < config.budget_flops <= spent[-1] and result.step == len(lines) > config.warmup_steps
    warmup = spent[config.warmup_steps]
    for step, r in enumerate(lines):
        progress = decay_progress(spent[step], warmup, config.budget_flops)
        assert r["lr"] == pytest.approx(config.lr * lr_at(step, config, progress), rel=1e-12)
    assert decay_progress(spent[-2], warmup, config.budget_flops) > 0.9   # the last step ends the decay


def test_time_budget_fixes_the_step_count_from_throughput_and_resumes_to_it(tmp_path):
    """0.01 minutes of steps that sleep 20 ms: at most 30 steps, the count measured over steps 2-11
    and kept in checkpoints, so a run killed after that resumes to the same count and losses."""
    config = small(budget_minutes=0.01, checkpoint_every=4, keep_checkpoints=0)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    result = train(toy.ToyTask(sleep=0.02), config, ref)
    steps = result.step
    assert 11 <= steps <= 30
    state = torch.load(result.checkpoint / "trainer.pt", weights_only=True)
    # a slow machine may spend the budget while measuring: the run then ends with the measurement
    assert steps == max(11, int(0.01 * 60 / state["run_length"]["seconds_per_step"]))
    lines = metrics(ref)
    fixed = dataclasses.replace(config, steps=steps)
    for step, r in enumerate(lines[11:], start=11):   # before the count is fixed: the peak after warm-up
        assert r["lr"] == pytest.approx(config.lr * lr_at(step, fixed), rel=1e-12)

    shutil.copytree(ref, killed)
    kill_after(killed, 12)
    again = train(toy.ToyTask(sleep=0.02), config, killed)
    assert again.step == steps and without_timing(metrics(killed)) == without_timing(lines)


# ---------------------------------------------------------------- resume after a kill

@pytest.mark.parametrize("budget", [{}, {"budget_flops": 100_000}], ids=["steps", "flop budget"])
def test_killed_run_resumes_with_identical_losses(tmp_path, budget):
    """SIGKILL a run after its first checkpoint; the resumed run logs exactly the losses of an
    uninterrupted one (dropout, numpy and python noise and task state all restored). Under a FLOP
    budget whose steps cost what the model's loss makes them, the schedule and the stopping step
    come out the same too."""
    config = small(steps=24, checkpoint_every=8, warmup_steps=4, **budget)
    noisy = ["--dropout", "0.2", "--jitter", "0.05", *(["--count-flops"] if budget else [])]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, *script(ref, config, *noisy)], env=ENV, check=True, timeout=60)
    steps = len(metrics(ref))
    assert 20 <= steps <= 28

    proc = subprocess.Popen([sys.executable, *script(killed, config, *noisy, "--sleep", "0.1")], env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not (killed / "checkpoints" / "step_000008").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        time.sleep(0.2)  # into the middle of the next interval
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = len(metrics(killed))
    resumed_from = latest_checkpoint(killed).name
    assert 8 <= killed_at < steps and resumed_from in ("step_000008", "step_000016")

    done = subprocess.run([sys.executable, *script(killed, config, *noisy)], env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"resuming from {killed / 'checkpoints' / resumed_from}" in done.stderr
    assert without_timing(metrics(killed)) == without_timing(metrics(ref))  # exact, every step once
    a, b = load_file(str(ref / "final_rank0.safetensors")), load_file(str(killed / "final_rank0.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- torchrun, 2 processes

DIST = dict(steps=8, grad_accum=2, checkpoint_every=4, warmup_steps=2)


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    """The same global batches in one process: what DDP and FSDP must reproduce."""
    out = tmp_path_factory.mktemp("single")
    task = toy.ToyTask()
    train(task, small(**DIST), out)
    return metrics(out), {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def assert_matches_reference(out: Path, reference) -> None:
    ref_metrics, ref_state = reference
    got = metrics(out)
    assert [r["step"] for r in got] == list(range(1, 9))
    for mine, theirs in zip(got, ref_metrics):
        for key in ("loss", "ema", "grad_norm", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (mine["step"], key)
    rank0, rank1 = (load_file(str(out / f"final_rank{r}.safetensors")) for r in (0, 1))
    for key, value in ref_state.items():
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)
    final = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    assert all(torch.equal(final[k], rank0[k]) for k in ref_state)


def test_torchrun_ddp_matches_single_process(tmp_path, single_process_reference):
    run = torchrun(script(tmp_path, small(**DIST, strategy="ddp")))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_matches_reference(tmp_path, single_process_reference)


def test_torchrun_fsdp_killed_and_resumed_matches_single_process(tmp_path, single_process_reference):
    config = small(**DIST, strategy="fsdp")
    killed = torchrun(script(tmp_path, config, "--die-at", "6"))
    assert killed.returncode != 0 and latest_checkpoint(tmp_path).name == "step_000004"
    run = torchrun(script(tmp_path, config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stderr
    assert_matches_reference(tmp_path, single_process_reference)
