import json

import pytest
import torch

from dynacomp.cli import main
from dynacomp.dtp import DTPConfig, RunConfig, evaluate, generate, load_run, train_run
from dynacomp.dtp.data import CharData
from dynacomp.dtp.recipe import DTPTask
from dynacomp.train import TrainConfig

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
