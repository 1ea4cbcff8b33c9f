"""The VQ-VAE recipe: log-mel features, padded batches against single utterances, deterministic
batches, exact resume with the reservoir in the task state, and the `dynacomp vq` commands on a
tiny synthetic speech set."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from dynacomp.data.speech_synthesis import SpeechSynthConfig, synthesize_dataset
from dynacomp.nn import VQConfig
from dynacomp.train import TrainConfig
from dynacomp.vqvae import cli
from dynacomp.vqvae.features import HOP, SpeechFrames, load_frames, log_mel, mel_filterbank
from dynacomp.vqvae.model import VQVAE, VQVAEConfig
from dynacomp.vqvae.recipe import VQVAETask, pad_batch, train_vqvae
from tests.data.fakes import fake_timit

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "Good morning, how are you today? I hope the weather stays fine.",
    "The museum opens at nine, closes at five, and is free on Sundays.",
    "Please put the heavy boxes on the top shelf of the kitchen cupboard.",
    "Every train to the coast was late because of the storm last night.",
]
TINY = VQVAEConfig(n_mels=20, hidden=16, layers=2, latent_dim=8, crop_frames=32, batch_size=4)
TINY_VQ = VQConfig(codebook_size=16, bypass_steps=2, reestimate_every=2, reestimate_until=6, reservoir_size=200,
                   kmeans_iters=5)


@pytest.fixture(scope="module")
def speech_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech") / "set"
    config = SpeechSynthConfig(hours=0.006, voices=("en-us", "en-gb-scotland", "en-029"), variants=("m3",),
                               seed=1, workers=2)
    synthesize_dataset(root, SENTENCES, config)
    return root


def random_frames(n: int = 5, seed: int = 0) -> SpeechFrames:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 60, (n,), generator=g).tolist()
    return SpeechFrames([torch.randn(t, TINY.n_mels, generator=g) for t in lengths],
                        [["a"] * t for t in lengths], [f"u{i}" for i in range(n)])


def test_mel_filterbank_and_a_tone():
    bank = mel_filterbank(40, 400)
    assert bank.shape == (40, 201) and (bank >= 0).all() and (bank.sum(1) > 0).all()
    peaks = bank.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()                    # centres rise with the band index
    t = torch.arange(16000) / 16000
    feats = log_mel(torch.sin(2 * math.pi * 1000 * t), 40)
    assert feats.shape == (16000 // HOP, 40)
    band_hz = peaks[feats[50].argmax()] * 8000 / 200
    assert abs(band_hz - 1000) < 150


def test_padded_batch_equals_one_utterance_at_a_time():
    torch.manual_seed(0)
    model = VQVAE(TINY, VQConfig(codebook_size=16)).eval()
    frames = random_frames()
    x, mask = pad_batch(frames.features)
    recon, indices, _, quantized = model(x, mask)
    for i, f in enumerate(frames.features):
        r, idx, _, q = model(f[None])
        n = len(f)
        assert torch.allclose(recon[i, :n], r[0], atol=1e-5) and torch.equal(indices[i, :n], idx[0])
        assert torch.allclose(quantized[i, :n], q[0], atol=1e-5)
        assert (indices[i, n:] == -1).all() and (recon[i, n:] == 0).all()


def test_batches_are_deterministic_and_split_over_ranks():
    model = VQVAE(TINY, VQConfig(codebook_size=16))
    task = VQVAETask(model, random_frames(), TINY, seed=3)
    whole = task.batch(7, 0, 0, 1)
    assert torch.equal(whole["x"], task.batch(7, 0, 0, 1)["x"])
    assert not torch.equal(whole["x"], task.batch(8, 0, 0, 1)["x"])
    halves = [task.batch(7, 0, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([h["x"] for h in halves]), whole["x"])
    assert whole["x"].shape == (TINY.batch_size, TINY.crop_frames, TINY.n_mels)
    loss, metrics = task.loss(model, whole)
    assert loss.ndim == 0 and set(metrics) == {"recon", "vq_loss", "usage", "perplexity"}
    groups = task.param_groups(model)
    assert groups[0]["params"] == [model.vq.codebook] and groups[0]["lr_mult"] == VQConfig().codebook_lr_mult


@pytest.mark.filterwarnings("ignore:resuming .* with a changed config")
def test_resume_is_exact_with_the_reservoir_in_the_task_state(tmp_path):
    """8 steps in one go == 3 steps, then a fresh process state resuming to 8: the re-estimations
    at steps 4 and 6 use a reservoir partly filled before the interruption."""
    frames = random_frames(8)
    config = dict(lr=3e-3, warmup_steps=0, schedule="constant", log_every=1, strategy="single", weight_decay=0.0)

    def run(out, steps, checkpoint_every):
        train_vqvae(tmp_path / "data", out, TINY, TINY_VQ,
                    TrainConfig(steps=steps, checkpoint_every=checkpoint_every, **config), frames=frames)
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    whole = run(tmp_path / "whole", 8, 0)
    run(tmp_path / "parts", 3, 3)
    resumed = run(tmp_path / "parts", 8, 0)
    drop = {"steps_per_s", "tokens_per_s", "elapsed_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in drop} for r in whole]
    assert whole[-1]["usage"] > 0


@pytest.mark.parametrize("corpus", ["synthetic", "timit"])
def test_cli_train_then_eval(corpus, speech_set, tmp_path, capsys):
    """On a synthetic set and on a recorded corpus (``timit:ROOT``), which the run record keeps by name."""
    data = str(speech_set) if corpus == "synthetic" else f"timit:{fake_timit(tmp_path / 'TIMIT', 12, 2)}"
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="group"))
    out = tmp_path / "run"
    tiny_flags = ["--n-mels", "20", "--hidden", "16", "--layers", "2", "--latent-dim", "8", "--crop-frames", "32",
                  "--batch-size", "4", "--codebook-size", "16", "--bypass-steps", "2", "--reestimate-every", "2",
                  "--reservoir-size", "200", "--steps", "6", "--checkpoint-every", "0", "--strategy", "single"]
    args = parser.parse_args(["vq", "train", "--data", data, "--out", str(out), *tiny_flags, "--json"])
    assert args.func(args) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["step"] == 6 and (out / "run.json").exists()

    args = parser.parse_args(["vq", "eval", str(out), "--probe-frames", "500", "--steps", "20", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["codebook_size"] == 16 and result["test_frames"] > 0
    for key in ("usage", "purity", "code_accuracy", "probe_accuracy"):
        assert 0 <= result[key] <= 1
    assert result["dead_codes"] <= 16 and result["recon_mse"] > 0
    assert (out / "eval.json").exists() and (out / "usage.png").stat().st_size > 0
    frames = load_frames(data, "test", 20)
    assert result["test_frames"] == sum(len(f) for f in frames.features)


def test_eval_of_a_folder_that_is_no_run(tmp_path):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["vq", "eval", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="dynacomp vq train"):
        args.func(args)
