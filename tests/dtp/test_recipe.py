import dataclasses
import json
import shutil

import pytest
import torch

from dynacomp.cli import main
from dynacomp.dtp import DTPConfig, RunConfig, evaluate, generate, load_run, train_run
from dynacomp.dtp.data import CharData
from dynacomp.dtp.eval import EvalConfig, calibrate_threshold
from dynacomp.dtp.flops import train_step_flops
from dynacomp.dtp.recipe import DTPTask, evaluate_run
from dynacomp.errors import UsageError
from dynacomp.train import TrainConfig
from tests.dtp.tiny import random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n_pre=1, n_mid=1, n_post=1, d_model=16, n_heads=2, d_ff=32)


def _synthetic() -> CharData:
    vocab = " abcdefgh"
    text = " ".join("abc defg ha bad cafe egg head".split() * 80)
    ids = torch.tensor([vocab.index(c) for c in text])
    return CharData(vocab, "en", {"train": ids, "validation": ids[:600], "test": ids[600:1200]})


def test_train_unigram_then_load_evaluate_and_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNACOMP_CACHE", str(tmp_path / "cache"))  # the Unigram model and targets
    data = _synthetic()
    run = RunConfig(data="synthetic", seq_len=32, batch_size=2, unigram_vocab=12, eval_stride=8)
    result = train_run(DTPConfig(boundaries="unigram", **TINY), run,
                       TrainConfig(steps=3, log_every=1, warmup_steps=0, checkpoint_every=0), tmp_path / "run", data)
    assert result.step == 3 and {"bpc", "aux", "boundary_rate", "tokens_per_s"} <= result.metrics.keys()
    loaded = load_run(tmp_path / "run")
    config = loaded.record["model"]
    assert loaded.record["vocab"] == data.vocab and config.vocab_size == 9 and config.whitespace_ids == (0,)
    assert loaded.record["run"] == run
    scores = evaluate(loaded.model, data.splits["test"], window=32, stride=8)
    assert scores["chars"] == 599 and 0 < scores["bpc"] < 6
    assert generate(loaded.model, data.splits["test"][None, :4], 10).shape == (1, 14)

    # A character's Unigram target is the one at its own position (not its successor's).
    task = DTPTask(config, run, data)
    task.targets = torch.arange(len(task.stream))
    batch = task.batch(0, 0, 0, 1)
    assert torch.equal(task.stream[batch["boundary_targets"]], batch["ids"])


def test_cli_train_eval_sample_plot(tmp_path, capsys):
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["dtp", "train", "--out", str(run), "--boundaries", "whitespace", "--seq-len", "32", "--eval-stride", "8",
                 "--batch-size", "2", "--steps", "2", "--warmup-steps", "0", "--json", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert main(["dtp", "eval", "--run", str(run), "--split", "validation", "--max-chars", "200", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["chars"] == 200 and scores["shortening_factor"] > 1
    assert main(["dtp", "sample", "--run", str(run), "--prompt", "To be, or not", "--chars", "12",
                 "--plot", str(tmp_path / "s.png"), "--json"]) == 0
    sample = json.loads(capsys.readouterr().out)
    assert sample["text"].startswith("to be or not") and len(sample["text"]) == 12 + 12 and sample["cached"]
    (tmp_path / "greedy.json").write_text(json.dumps({"temperature": 0, "chars": 5}))
    assert main(["dtp", "sample", "--run", str(run), "--prompt", "To be", "--config", str(tmp_path / "greedy.json"),
                 "--no-cache", "--json"]) == 0
    greedy = json.loads(capsys.readouterr().out)
    assert len(greedy["text"]) == 5 + 5 and not greedy["cached"]
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["dtp", "plot", "--run", str(run), "--out", str(tmp_path / "p.png"), "--chars", "100"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


# ---------------------------------------------------------------- compute budgets


def _metrics(out) -> list[dict]:
    timing = {"steps_per_s", "tokens_per_s", "elapsed_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out) -> dict[str, torch.Tensor]:
    return load_run(out).model.state_dict()


RUN = RunConfig(data="synthetic", seq_len=32, batch_size=2, eval_stride=8)


def test_vanilla_at_the_flops_of_n_steps_trains_exactly_as_n_steps(tmp_path):
    data = _synthetic()
    config = DTPConfig(boundaries="none", **TINY)
    per_step = train_step_flops(dataclasses.replace(config, vocab_size=len(data.vocab)), 2, 32)
    settings = dict(warmup_steps=2, log_every=1, checkpoint_every=0)
    train_run(config, RUN, TrainConfig(steps=6, **settings), tmp_path / "steps", data)
    train_run(config, RUN, TrainConfig(budget_flops=6 * per_step, **settings), tmp_path / "budget", data)
    assert _metrics(tmp_path / "budget") == _metrics(tmp_path / "steps")
    assert [r["flops"] for r in _metrics(tmp_path / "budget")] == [per_step * s for s in range(1, 7)]


def test_gumbel_flop_budget_killed_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    """The cost of a step follows the sampled boundaries; the counted FLOPs and the schedule come
    back from the checkpoint, so the resumed run stops at the same step with the same weights."""
    data = _synthetic()
    config = DTPConfig(boundaries="gumbel", **TINY)
    rows = dataclasses.replace(config, vocab_size=len(data.vocab))
    budget = TrainConfig(budget_flops=10 * train_step_flops(rows, 2, 32, groups=8), warmup_steps=2, log_every=1,
                         checkpoint_every=3, keep_checkpoints=0)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    result = train_run(config, RUN, budget, ref, data)
    lines = _metrics(ref)
    per_step = [b["flops"] - a["flops"] for a, b in zip(lines, lines[1:])]
    assert len(set(per_step)) > 1 and lines[-2]["flops"] < budget.budget_flops <= lines[-1]["flops"]

    shutil.copytree(ref, killed)
    for folder in (killed / "checkpoints").iterdir():
        if folder.name != "step_000003":
            shutil.rmtree(folder)   # what a kill at step 4 or 5 leaves
    again = train_run(config, RUN, budget, killed, data)
    assert again.step == result.step and _metrics(killed) == lines
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref).values(), _weights(killed).values()))


def test_cli_budgets_and_their_errors(tmp_path, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    base = ["dtp", "train", "--boundaries", "fixed", "--seq-len", "32", "--batch-size", "2", "--warmup-steps", "0",
            "--eval-stride", "8", "--json", *flags]
    assert main([*base, "--out", str(tmp_path / "flops"), "--budget-flops", "3e6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["flops"] >= 3e6
    assert main([*base, "--out", str(tmp_path / "minutes"), "--budget-minutes", "0.001"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] >= 11   # the throughput is measured over the first 11
    assert main([*base, "--out", str(tmp_path / "both"), "--budget-flops", "3e6", "--budget-minutes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TrainConfig: give one budget")


# ---------------------------------------------------------------- Gumbel at its training-time shortening


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_calibrated_threshold_gives_the_wanted_boundary_rate(rate):
    model = tiny_model("gumbel")
    ids = random_ids(1, 300, seed=8)[0]
    model.source.threshold = calibrate_threshold(model, ids, window=40, stride=10, rate=rate)
    scores = evaluate(model, ids, window=40, stride=10)
    assert scores["groups"] == round(rate * scores["chars"])


def test_gumbel_run_is_scored_at_its_training_rate_as_well(tmp_path):
    data = _synthetic()
    run = tmp_path / "gumbel"
    train_run(DTPConfig(boundaries="gumbel", **TINY), RUN, TrainConfig(steps=10, warmup_steps=0, log_every=1), run, data)
    result = evaluate_run(run, load_run(run), data, EvalConfig(calibrate=True))
    calibrated = result["calibrated"]
    assert calibrated["train_boundary_rate"] == _metrics(run)[-1]["boundary_rate"]   # the last tenth of 10 steps
    assert {"bpc", "shortening_factor"} <= result.keys() and calibrated["chars"] == result["chars"]
    loaded = load_run(run)
    loaded.model.source.threshold = calibrated["threshold"]
    validation = evaluate(loaded.model, data.splits["validation"], 32, 8)
    wanted = calibrated["train_boundary_rate"] * validation["chars"]
    assert abs(validation["groups"] - wanted) < 0.01 * validation["chars"]   # the repeated text ties some logits

    whitespace = tmp_path / "whitespace"
    train_run(DTPConfig(boundaries="whitespace", **TINY), RUN, TrainConfig(steps=1, warmup_steps=0), whitespace, data)
    with pytest.raises(UsageError, match="--calibrate is for gumbel runs; .* has whitespace boundaries"):
        evaluate_run(whitespace, load_run(whitespace), data, EvalConfig(calibrate=True))
