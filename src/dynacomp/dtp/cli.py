"""``dynacomp dtp``: train, evaluate and sample hourglass character LMs; plot their boundaries."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dynacomp.config import add_config_args, config_from_args
from dynacomp.console import add_json_flag, emit
from dynacomp.data.text_cleaning import clean_text8
from dynacomp.dtp.config import DTPConfig
from dynacomp.dtp.data import CharData, load_data
from dynacomp.dtp.eval import EvalConfig
from dynacomp.dtp.plot import plot_boundaries
from dynacomp.dtp.recipe import LoadedRun, RunConfig, evaluate_run, load_run, train_run
from dynacomp.dtp.sample import SampleConfig, generate
from dynacomp.errors import Failure, UsageError
from dynacomp.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dtp", help="Dynamic Token Pooling: hourglass character LMs with learned boundaries",
                            description="Dynamic token pooling (Nawrot et al. 2023): an hourglass character "
                                        "LM that mean-pools characters between boundaries from one of six sources.")
    dtp_sub = parser.add_subparsers(dest="dtp_command", metavar="COMMAND", required=True)

    p = dtp_sub.add_parser("train", help="train a model (resumes what --out holds)",
                           description="Train on a corpus; writes dtp.json, checkpoints and metrics.jsonl to --out. "
                                       "Paper settings: --lr 2.5e-4 --weight-decay 0 --beta2 0.999 --grad-clip 0.25 "
                                       "--min-lr-ratio 0 --warmup-steps 4000 --steps 200000 --seq-len 2048 "
                                       "--d-model 512 (the default model). A compute budget instead of --steps: "
                                       "--budget-flops F (each step counted at its realised shortening, "
                                       "dynacomp.dtp.flops) or --budget-minutes M; the schedule spans it.")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    add_config_args(p, DTPConfig)
    add_config_args(p, RunConfig)
    add_config_args(p, TrainConfig)
    add_json_flag(p)
    p.set_defaults(func=_train)

    p = dtp_sub.add_parser("eval", help="bits per character and shortening factor of a trained run")
    p.add_argument("--run", type=Path, required=True, help="run folder (from dtp train)")
    add_config_args(p, EvalConfig)
    add_json_flag(p)
    p.set_defaults(func=_eval)

    p = dtp_sub.add_parser("sample", help="generate text from a prompt")
    p.add_argument("--run", type=Path, required=True, help="run folder (from dtp train)")
    p.add_argument("--prompt", required=True, help="the start of the text (cleaned like the training data)")
    p.add_argument("--plot", type=Path, default=None, help="also draw the text with its boundaries here")
    add_config_args(p, SampleConfig)
    add_json_flag(p)
    p.set_defaults(func=_sample)

    p = dtp_sub.add_parser("plot", help="draw a text with the boundaries a trained run predicts")
    p.add_argument("--run", type=Path, required=True, help="run folder (from dtp train)")
    p.add_argument("--out", type=Path, required=True, help="image file (png, svg, pdf)")
    p.add_argument("--text", default=None, help="the text (default: the start of the validation split)")
    p.add_argument("--chars", type=int, default=400, help="characters of the validation split to draw")
    p.set_defaults(func=_plot)


def _train(args: argparse.Namespace) -> None:
    config = config_from_args(DTPConfig, args)
    run = config_from_args(RunConfig, args)
    result = train_run(config, run, config_from_args(TrainConfig, args), args.out)
    emit({"out": str(args.out), "step": result.step, "wall_time_s": result.wall_time,
          "checkpoint": str(result.checkpoint), "metrics": result.metrics}, args.json)


def _run_data(loaded: LoadedRun) -> CharData:
    corpus = loaded.record["run"].data
    data = load_data(corpus)
    if data.vocab != loaded.record["vocab"]:
        raise Failure(f"the vocabulary of {corpus} changed since the run was trained; "
                      "evaluate on the data it was trained with")
    return data


def _eval(args: argparse.Namespace) -> None:
    config = config_from_args(EvalConfig, args)
    loaded = load_run(args.run)
    result = evaluate_run(args.run, loaded, _run_data(loaded), config)
    emit({"run": str(args.run), "split": config.split, "boundaries": loaded.model.config.boundaries,
          "checkpoint": str(loaded.checkpoint), **result}, args.json)


def _encode(loaded: LoadedRun, text: str) -> torch.Tensor:
    language = loaded.record["language"]
    if language:
        text = clean_text8(text, language)
    data = CharData(loaded.record["vocab"], language, {})
    if not text:
        raise UsageError("the text is empty after cleaning: give some letters of the training language")
    return data.encode(text)


def _boundaries(loaded: LoadedRun, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        b = loaded.model(ids[None]).boundaries
    return [0] * len(ids) if b is None else b[0].int().tolist()


def _sample(args: argparse.Namespace) -> None:
    config = config_from_args(SampleConfig, args)
    loaded = load_run(args.run)
    prompt = _encode(loaded, args.prompt)[None]
    g = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    ids = generate(loaded.model, prompt, config.chars, config.temperature, config.top_k, config.cache, g)
    seconds = time.perf_counter() - start
    text = "".join(loaded.record["vocab"][i] for i in ids[0].tolist())
    result = {"prompt": text[:prompt.shape[1]], "text": text, "chars_per_s": config.chars / seconds,
              "cached": config.cache}
    if args.plot:
        result["plot"] = str(plot_boundaries(text, _boundaries(loaded, ids[0]), args.plot,
                                             f"{args.run.name}: {loaded.model.config.boundaries}"))
    emit(result, args.json, render=lambda r: r["text"])


def _plot(args: argparse.Namespace) -> None:
    loaded = load_run(args.run)
    ids = _encode(loaded, args.text) if args.text else _run_data(loaded).splits["validation"][:args.chars]
    text = "".join(loaded.record["vocab"][i] for i in ids.tolist())
    path = plot_boundaries(text, _boundaries(loaded, ids), args.out, f"{args.run.name}: {loaded.model.config.boundaries}")
    print(path)
