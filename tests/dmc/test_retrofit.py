"""The DMC retrofit recipe on a tiny random Llama: the loss and schedules, the channel hooks, the
three stages end to end with their outputs, resume after an interruption, and a 2-process
torchrun run through the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dynacomp.dmc import DMCConfig, convert, is_dmc_checkpoint, load, load_base, zero_decision_channels
from dynacomp.dmc.modeling import channels
from dynacomp.dmc.retrofit import RetrofitConfig, RetrofitTask, calibrate, distillation_loss, ratio_loss, retrofit
from dynacomp.dmc.retrofit.recipe import _stage_model
from tests.dmc.tiny import save_tiny_model, tiny_model

TIMING = {"steps_per_s", "tokens_per_s", "elapsed_s"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DYNACOMP_PROGRESS": "0"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama with the SmolLM2 tokenizer, and a text file to train on."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def tiny_config(model: Path, data: Path, **overrides) -> RetrofitConfig:
    values = dict(model=str(model), data=str(data), seq_len=32, batch_size=4, zero_out_steps=2, retrofit_steps=6,
                  finetune_steps=2, lr=1e-2, warmup_steps=1, eval_tokens=256, checkpoint_every=2)
    return RetrofitConfig(**{**values, **overrides})


def metrics(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- pure pieces

def test_ratio_loss_is_one_sided():
    alpha = torch.zeros(3, 2, 2, 10)                  # (layers, B, H, L)
    alpha[:, 1] = 0.75                                # sequence 1 compresses 4x, more than asked
    loss, mean = ratio_loss(alpha, target_cr=2.0)
    assert mean.tolist() == [0.0, 0.75]
    assert loss.item() == pytest.approx(0.5 / 2)      # only sequence 0 is short of 1 - 1/2
    assert ratio_loss(alpha, target_cr=1.0)[0].item() == 0.0


def test_schedule_shapes_and_validation():
    config = RetrofitConfig(target_cr=3, seq_len=64, batch_size=4, zero_out_steps=2, retrofit_steps=10,
                            finetune_steps=4, short_seq_len=16)
    assert [config.target_at("retrofit", s) for s in (0, 4, 9, 20)] == pytest.approx([1.2, 2.0, 3.0, 3.0])
    assert config.target_at("zero_out", 1) == 1 and config.target_at("finetune", 0) == 3
    assert config.sequence_shape("zero_out", 0) == (16, 16)
    assert config.sequence_shape("retrofit", 4) == (16, 16) and config.sequence_shape("retrofit", 5) == (4, 64)
    assert config.tokens_trained() == 16 * 256
    assert config.train_config("finetune").schedule == "cosine"
    assert config.train_config("retrofit").schedule == "constant"
    with pytest.raises(ValueError, match="whole sequences"):
        RetrofitConfig(seq_len=64, batch_size=1, short_seq_len=48)
    with pytest.raises(ValueError, match="at most seq_len"):
        RetrofitConfig(seq_len=64, short_seq_len=128)
    with pytest.raises(ValueError, match="target_cr"):
        RetrofitConfig(target_cr=0.5)
    with pytest.raises(ValueError, match="needs --init"):
        RetrofitConfig(retrofit_steps=0)


def test_batches_are_deterministic_and_split_over_ranks():
    tokens = torch.arange(1000)
    task = RetrofitTask(tiny_model(), tokens, RetrofitConfig(seq_len=8, batch_size=4), "retrofit")
    whole = task.batch(3, 0, 0, 1)
    assert whole.shape == (4, 8) and torch.equal(whole, task.batch(3, 0, 0, 1))
    assert torch.equal(torch.cat([task.batch(3, 0, r, 2) for r in (0, 1)]), whole)
    assert not torch.equal(task.batch(4, 0, 0, 1), whole)
    assert torch.equal(whole[:, 1:] - whole[:, :-1], torch.ones(4, 7, dtype=torch.long))   # contiguous windows


def test_zero_out_ramp_ends_at_the_zeroed_model_and_scale_folds_into_weights():
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    model = tiny_model()
    zeroed = copy.deepcopy(model)
    zero_decision_channels(zeroed)
    task = RetrofitTask(model, torch.arange(100), RetrofitConfig(zero_out_steps=10), "zero_out")
    with torch.no_grad():
        task.on_step_start(0, model, None)
        assert not torch.allclose(model(ids).logits, zeroed(ids).logits)
        task.on_step_start(8, model, None)                             # 8 = 0.8 x 10 steps: ramp at 0
        torch.testing.assert_close(model(ids).logits, zeroed(ids).logits)

    dmc = convert(tiny_model(), DMCConfig())
    folded = copy.deepcopy(dmc).eval()
    channels.scale_weights(folded, 7.0)
    RetrofitTask(dmc, torch.arange(100), RetrofitConfig(decision_scale=7.0), "retrofit")
    with torch.no_grad():
        torch.testing.assert_close(dmc.eval()(ids, use_cache=False).logits, folded(ids, use_cache=False).logits)


def test_train_params_subsets():
    for subset, trained in (("qk", {"q_proj", "k_proj"}), ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"})):
        model = tiny_model()
        task = RetrofitTask(model, torch.arange(100), RetrofitConfig(train_params=subset), "retrofit")
        groups = task.param_groups(model)
        names = {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}
        assert names == trained and sum(len(g["params"]) for g in groups) == 2 * 2 * len(trained) // 2


# ---------------------------------------------------------------- the recipe end to end

@pytest.fixture(scope="module")
def finished_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(*tiny_folder)
    return config, out, retrofit(config, out, command="test")


def test_retrofit_writes_checkpoint_report_and_heatmap(finished_run):
    config, out, report = finished_run
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["command"] == "test" and report["tokens_trained"] == 10 * 4 * 32
    assert report["eval"]["scored_tokens"] == 8 * 31
    per_head = torch.tensor(report["per_layer_head"])
    assert per_head.shape == (2, 2) and (per_head >= 1).all()
    assert report["compression_ratio"] > 1.2                      # lr 1e-2 teaches tiny models to merge fast
    assert (out / "cr_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert [len(metrics(out / s)) for s in ("zero_out", "retrofit", "finetune")] == [2, 6, 2]
    last = metrics(out / "finetune")[-1]
    assert {"ce", "aux", "mean_alpha", "cr", "target_cr"} <= set(last) and last["target_cr"] == 2.0

    assert is_dmc_checkpoint(out / "model")
    model, tokenizer = load(out / "model")
    ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    cache = model.new_cache()
    with torch.no_grad():
        model.generate(ids, cache=cache, max_new_tokens=8, do_sample=False)
    assert cache.stats().tokens == ids.shape[1] + 7          # the last new token is never fed back


def test_interrupted_retrofit_resumes_to_the_same_result(finished_run, tmp_path, monkeypatch):
    config, reference, report = finished_run
    original = RetrofitTask.on_step_start

    def interrupt(self, step, model, trainer):
        if self.stage == "retrofit" and step == 3:
            raise KeyboardInterrupt("simulated kill")
        original(self, step, model, trainer)

    monkeypatch.setattr(RetrofitTask, "on_step_start", interrupt)
    with pytest.raises(KeyboardInterrupt):
        retrofit(config, tmp_path)
    assert not (tmp_path / "finetune").exists()
    monkeypatch.setattr(RetrofitTask, "on_step_start", original)
    resumed = retrofit(config, tmp_path)
    for stage in ("zero_out", "retrofit", "finetune"):
        assert metrics(tmp_path / stage) == metrics(reference / stage), stage
    assert resumed["dmc_perplexity"] == pytest.approx(report["dmc_perplexity"], rel=1e-6)
    assert resumed["per_layer_head"] == report["per_layer_head"]


def test_continuing_from_a_checkpoint_ramps_on_from_its_ratio(finished_run, tmp_path):
    config, out, report = finished_run
    more = replace(config, init=str(out / "model"), ramp_from=2.0, target_cr=3.0, retrofit_steps=2,
                   finetune_steps=0)
    # The checkpoint's weights come back with the decision scale taken out, as training expects.
    model = _stage_model(more, "retrofit", None)
    channels.scale_weights(model, config.decision_scale)
    saved = load_base(out / "model")[0].state_dict()
    assert all(torch.allclose(value, saved[name], rtol=1e-6, atol=1e-7) for name, value in model.state_dict().items())

    continued = retrofit(more, tmp_path, command="test")
    assert not (tmp_path / "zero_out").exists() and continued["tokens_trained"] == 2 * 4 * 32
    assert [m["target_cr"] for m in metrics(tmp_path / "retrofit")] == [2.5, 3.0]


def test_a_checkpoint_can_be_fine_tuned_at_its_ratio_without_a_ramp(finished_run, tmp_path):
    config, out, report = finished_run
    more = replace(config, init=str(out / "model"), retrofit_steps=0, finetune_steps=2)
    continued = retrofit(more, tmp_path, command="test")
    assert not (tmp_path / "zero_out").exists() and not (tmp_path / "retrofit").exists()
    assert [m["target_cr"] for m in metrics(tmp_path / "finetune")] == [config.target_cr] * 2
    assert continued["tokens_trained"] == 2 * 4 * 32


def test_calibration_finds_the_threshold_that_realises_the_target(finished_run, tmp_path):
    config, out, report = finished_run
    target = report["compression_ratio"] * 1.2
    calibrated = calibrate(out / "model", tmp_path, target, base=config.model, data=config.data, tokens=128,
                           context=32, eval_tokens=256, command="test")
    assert calibrated["validation_ratio"] >= target and calibrated["decision_threshold"] < 0
    model, _ = load(tmp_path / "model")
    assert model.dmc_config.decision_threshold == calibrated["decision_threshold"]
    assert calibrated["compression_ratio"] > report["compression_ratio"]     # more merging on the test split too
    assert json.loads((tmp_path / "report.json").read_text())["command"] == "test"


def test_torchrun_two_processes_through_the_cli(tiny_folder, tmp_path):
    model, data = tiny_folder
    flags = ["--model", str(model), "--data", str(data), "--seq-len", "32", "--batch-size", "4",
             "--zero-out-steps", "1", "--retrofit-steps", "2", "--finetune-steps", "1", "--eval-tokens", "128",
             "--strategy", "ddp", "--out", str(tmp_path), "--json"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dynacomp.cli", "dmc", "retrofit", *flags],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert json.loads(run.stdout)["tokens_trained"] == report["tokens_trained"] == 4 * 4 * 32
    assert "dmc retrofit" in report["command"] and report["compression_ratio"] >= 1
    assert [len(metrics(tmp_path / s)) for s in ("zero_out", "retrofit", "finetune")] == [1, 2, 1]


def test_generate_cli_reads_the_retrofitted_checkpoint(finished_run, capsys):
    from dynacomp.cli import main

    _, out, _ = finished_run
    assert main(["dmc", "generate", "--model", str(out / "model"), "--prompt", "To be, or not",
                 "--max-new-tokens", "5", "--force-cr", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "To be, or not" and result["cache"]["tokens"] >= 5
    assert len(result["cache"]["per_layer_head"]) == 2


def test_dms_retrofit_distils_evicts_and_decodes_like_its_teacher_forced_pass(tiny_folder, tmp_path):
    """The same recipe with --policy dms: no zero-out stage, only the read channel zeroed,
    distillation, a learned ratio, and a checkpoint whose cache frees evicted tokens."""
    config = tiny_config(*tiny_folder, policy="dms", eviction_window=4, distill=1.0, decision_scale=100.0)
    report = retrofit(config, tmp_path)
    assert not (tmp_path / "zero_out").exists() and report["tokens_trained"] == 8 * 4 * 32
    assert {"kl", "aux", "mean_alpha"} <= set(metrics(tmp_path / "finetune")[-1])
    assert report["compression_ratio"] > 1.2
    model, _ = load(tmp_path / "model")
    assert model.dmc_config.policy == "dms"
    ids = torch.randint(0, 1000, (1, 64))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits
        cache = model.new_cache()
        decoded = torch.cat([model(ids[:, :21], cache=cache).logits]
                            + [model(ids[:, t:t + 1], cache=cache).logits for t in range(21, 64)], 1)
    assert (teacher_forced - decoded).abs().max() <= 1e-3
    assert cache.stats().compression_ratio > 1.0


def test_training_only_the_decision_rows_leaves_every_other_weight_alone(tiny_folder, tmp_path):
    config = tiny_config(*tiny_folder, policy="dms", eviction_window=4, distill=1.0, train_params="decisions",
                         retrofit_steps=3, finetune_steps=0)
    retrofit(config, tmp_path)
    trained, _, _ = load_base(tmp_path / "model")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_folder[0])
    rows = channels.eviction_rows(trained.config)
    for (name, after), before in zip(trained.named_parameters(), base.parameters()):
        changed = (after != before).any(-1) if after.dim() == 2 else (after != before)
        if name.endswith("q_proj.weight"):
            assert changed[rows].any() and not changed[[r for r in range(len(changed)) if r not in rows]].any()
        else:
            assert not changed.any(), name


def test_a_probe_retrofit_trains_the_probe_alone_and_resumes_from_its_checkpoint(tiny_folder, tmp_path):
    """--eviction-probe with --train-params decisions: the saved model is the base model plus probes,
    and an --init continuation starts from those probes, not from fresh ones."""
    config = tiny_config(*tiny_folder, policy="dms", eviction_window=4, distill=1.0, train_params="decisions",
                         eviction_probe=True, decision_scale=100.0, retrofit_steps=3, finetune_steps=0)
    retrofit(config, tmp_path / "first")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_folder[0])
    plain, _, _ = load_base(tmp_path / "first" / "model")
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), base.parameters()))
    model, _ = load(tmp_path / "first" / "model")
    probes = [p.weight.clone() for p in channels.eviction_probes(model)]
    assert probes and all(p.abs().sum() > 0 for p in probes)
    more = replace(config, init=str(tmp_path / "first" / "model"), retrofit_steps=0, finetune_steps=1, lr=0.0)
    retrofit(more, tmp_path / "more")
    again, _ = load(tmp_path / "more" / "model")
    assert all(torch.allclose(a, p.weight) for a, p in zip(probes, channels.eviction_probes(again)))


def test_distillation_measures_either_direction_of_the_kl_divergence():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 11)
    p, q = teacher.softmax(-1), student.softmax(-1)
    forward = (p * (p.log() - q.log())).sum(-1).mean()
    reverse = (q * (q.log() - p.log())).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher), forward)
    torch.testing.assert_close(distillation_loss(student, teacher, "reverse"), reverse)
    assert not torch.allclose(forward, reverse)
    assert distillation_loss(teacher, teacher, "reverse").abs() < 1e-6
