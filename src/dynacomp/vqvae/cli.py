"""``dynacomp vq train`` and ``dynacomp vq eval``: the VQ-VAE on synthetic speech."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dynacomp.config import add_config_args, config_from_args
from dynacomp.console import add_json_flag, emit
from dynacomp.data.speech import SPLITS
from dynacomp.io import write_json
from dynacomp.metrics.probe import ProbeConfig
from dynacomp.nn import VQConfig
from dynacomp.train import TrainConfig, is_main_process
from dynacomp.vqvae.evaluate import EvalConfig, evaluate
from dynacomp.vqvae.features import load_frames
from dynacomp.vqvae.model import VQVAEConfig
from dynacomp.vqvae.plot import plot_usage, read_metrics
from dynacomp.vqvae.recipe import load_run, train_vqvae

EVAL_FILE = "eval.json"
PLOT_FILE = "usage.png"


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("vq", help="robust vector-quantised bottlenecks and a VQ-VAE",
                           description="A VQ-VAE on log-mel frames of synthetic speech with a robust "
                                       "vector quantiser (BatchNorm, codebook learning rate, k-means "
                                       "re-estimation from a reservoir).")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a VQ-VAE on the train split of a speech set",
        description="Train a VQ-VAE on log-mel crops of the train split of a speech set (--data); "
                    "resumes a run found in --out. Runs under torchrun too (DDP).")
    train.add_argument("--data", type=Path, required=True, help="speech set: a folder from `dynacomp data speech`, or "
                       "timit:ROOT, buckeye:ROOT, librispeech:ROOT:ALIGNMENTS")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, run.json")
    for config_cls in (VQVAEConfig, VQConfig, TrainConfig):
        add_config_args(train, config_cls)
    add_json_flag(train)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "eval", help="reconstruction, codebook usage and phone information on held-out voices",
        description="Evaluate a trained run on the test split (voices never heard in training): "
                    f"reconstruction MSE, codebook usage, perplexity, dead codes, code purity, code->phone "
                    f"accuracy and a linear phone probe. Writes RUN/{EVAL_FILE} and a plot of code usage "
                    f"over training, RUN/{PLOT_FILE}.")
    evaluate.add_argument("run", type=Path, help="run folder of `dynacomp vq train`")
    evaluate.add_argument("--data", type=Path, default=None, help="speech set (default: the one it was trained on)")
    evaluate.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate")
    add_config_args(evaluate, EvalConfig)
    add_config_args(evaluate, ProbeConfig)
    add_json_flag(evaluate)
    evaluate.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    configs = [config_from_args(c, args) for c in (VQVAEConfig, VQConfig, TrainConfig)]
    _, result = train_vqvae(args.data, args.out, *configs)
    if is_main_process():
        emit({"out": str(args.out), "step": result.step, "wall_time_s": round(result.wall_time, 1),
              "checkpoint": str(result.checkpoint), "metrics": result.metrics}, args.json)
    return 0


def _eval(args: argparse.Namespace) -> int:
    config, probe = config_from_args(EvalConfig, args), config_from_args(ProbeConfig, args)   # before the run loads
    loaded = load_run(args.run)
    model, run = loaded.model, loaded.record
    data = args.data or Path(run["data"])
    mean, std = torch.tensor(run["mean"]), torch.tensor(run["std"])
    frames = {split: load_frames(data, split, model.config.n_mels).normalized(mean, std)
              for split in dict.fromkeys((args.split, "train"))}
    results = evaluate(model, frames[args.split], frames["train"], config, probe)
    results = {"run": str(args.run), "data": str(data), "split": args.split, **results}
    write_json(args.run / EVAL_FILE, results)
    plot_usage({args.run.name: read_metrics(args.run)}, args.run / PLOT_FILE)
    emit(results, args.json)
    return 0
