"""Hierarchical CPC against its baselines on held-out voices of the synthetic speech.

    dynacomp data speech --hours 1 --out runs/speech_1h                      # the data (~1 min)
    python benchmarks/hcpc_compare.py --data runs/speech_1h --minutes 20      # the acceptance run
    python benchmarks/hcpc_compare.py --data runs/speech_1h --steps 3 --dim 32 --eval-utterances 4 \\
        --runs runs/smoke/hcpc --results runs/smoke/hcpc/results            # a smoke run

Trains, each with ``dynacomp.train`` into RUNS/<method>/ for the same number of steps (resumable:
re-running the same command continues):

- ``cpc``: low-level CPC only, whose encoder frames give the peak-picking baseline;
- ``pg``: the hierarchical model with boundaries trained by policy gradient (the paper's way);
- ``st``: the same with straight-through Gumbel boundaries.

Then scores, on the test voices, the segmentation (20 ms, strict and lenient) of periodic boundaries
at the mean training phone duration, of CPC dissimilarity peaks (prominence chosen on validation)
and of each hierarchical model; ABX within/across speaker and a linear phone probe of the low
(``c``) and high (``h``) features. Writes RESULTS/hcpc_compare.{md,json} and hcpc_boundaries.png
(docs/results/hcpc.md discusses them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from common import machine

from dynacomp.data.speech import boundaries_in_frames, read_audio
from dynacomp.data.speech_corpora import load_speech
from dynacomp.hcpc.eval import EvalConfig, evaluate, mean_phone_frames
from dynacomp.hcpc.model import FRAME, HCPCConfig
from dynacomp.hcpc.plot import plot_segmentation
from dynacomp.hcpc.recipe import HCPCTask, RunConfig, load_run, load_split_audio, train_run
from dynacomp.io import write_json, write_text
from dynacomp.train import TrainConfig, train

METHODS = {
    "cpc": dict(hierarchical=False),
    "pg": dict(hierarchical=True, boundary_training="reinforce"),
    "st": dict(hierarchical=True, boundary_training="straight_through"),
}
LABELS = {"cpc": "CPC", "pg": "hCPC, policy gradient", "st": "hCPC, straight-through"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("runs/speech_1h"), help="synthetic speech set")
    p.add_argument("--minutes", type=float, default=20, help="training time per run, timed on the hierarchical model")
    p.add_argument("--steps", type=int, default=0, help="training steps per run (0: from --minutes)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--runs", type=Path, default=Path("runs/hcpc_compare"), help="run folders")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="where hcpc_compare.md and friends go")
    p.add_argument("--dim", type=int, default=128, help="model width (paper: 256)")
    p.add_argument("--negatives", type=int, default=32, help="negatives per frame (paper: 128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, default=20480, help="samples per training window")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--aligned", action="store_true", help="the low level's aligned-prediction loss (ACPC, the paper's) "
                   "instead of plain CPC, for every method")
    p.add_argument("--eval-utterances", type=int, default=0, help="test and validation utterances scored (0: all)")
    p.add_argument("--probe-utterances", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batches")
    return p.parse_args()


def model_config(args: argparse.Namespace, method: str, steps: int, mean_frames: float) -> HCPCConfig:
    """Paper settings, except that the low level trains alone for the first fifth of the run (a
    run of a few thousand steps cannot afford the paper's slow joint start, see docs/results/hcpc.md),
    with schedules scaled from 50 epochs to the joint steps: quantiser bypass for 3/50 of them,
    re-estimation every 1/50, entropy weight decaying over 20/50, temperature reaching its minimum
    at the end. The length prior uses the mean phone duration of the training labels."""
    low_level = steps // 5 if METHODS[method]["hierarchical"] else 0
    joint = steps - low_level
    return HCPCConfig(dim=args.dim, negatives=args.negatives, mean_segment_frames=mean_frames,
                      low_level_steps=low_level, vq_bypass_steps=max(1, 3 * joint // 50),
                      vq_reestimate_every=max(1, joint // 50), entropy_decay_steps=max(1, 2 * joint // 5),
                      temperature_decay=(0.25 ** (1 / max(joint, 1))), aligned=args.aligned, **METHODS[method])


def train_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The paper's Adam (0.9, 0.999, no weight decay) with a linear warm-up over 1/5 of the run."""
    return TrainConfig(steps=steps, lr=args.lr, warmup_steps=max(1, steps // 5), weight_decay=0.0, beta2=0.999,
                       min_lr_ratio=1.0, schedule="constant", log_every=max(1, min(50, steps // 20)),
                       checkpoint_every=max(1, steps // 5), keep_checkpoints=1, seed=args.seed)


def plan(args: argparse.Namespace, audio: list[torch.Tensor], mean_frames: float) -> int:
    """Steps per run, fixed once per runs folder (RUNS/plan.json)."""
    path = args.runs / "plan.json"
    if path.exists():
        return json.loads(path.read_text())["steps"]
    steps = args.steps
    if not steps:
        run = RunConfig(data=args.data, window=args.window, batch_size=args.batch_size)
        config = model_config(args, "pg", 1000, mean_frames)
        with tempfile.TemporaryDirectory() as scratch:
            result = train(HCPCTask(config, run, audio), TrainConfig(steps=4, log_every=2, checkpoint_every=0), scratch)
        steps = max(1, int(args.minutes * 60 * result.metrics["steps_per_s"]))
    write_json(path, {"steps": steps, "minutes": args.minutes})
    return steps


def fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def segmentation_rows(results: dict) -> list[tuple[str, dict]]:
    rows = []
    if "cpc" in results:
        rows.append(("periodic at the mean phone duration", results["cpc"]["segmentation"]["periodic"]))
        rows.append(("CPC frame-dissimilarity peaks", results["cpc"]["segmentation"]["peaks"]))
    for method in ("pg", "st"):
        if method in results:
            rows.append((LABELS[method], results[method]["segmentation"]["model"]))
            rows.append((f"{LABELS[method]}, peaks of its boundary logits", results[method]["segmentation"]["model_peaks"]))
    return rows


def report(args: argparse.Namespace, steps: int, results: dict, mean_frames: float, plot: Path | None) -> str:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Variable-rate hierarchical CPC: phone segmentation on held-out voices", "",
             f"Command: `{command}`  ", f"Machine: {machine()}  ", f"Date: {datetime.date.today().isoformat()}  ",
             f"Data: `{args.data}` (test voices never heard in training); {steps} steps per run, batch "
             f"{args.batch_size} x {args.window} samples, width {args.dim}, {args.negatives} negatives, "
             f"{'ACPC' if args.aligned else 'CPC'} low-level loss; "
             f"mean training phone {mean_frames:.2f} frames (used by the periodic baseline and the length prior)", "",
             "## Segmentation (tolerance 20 ms, pooled counts, %)", "",
             "| segmenter | strict P | R | F1 | R-value | lenient P | R | F1 | R-value |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in segmentation_rows(results):
        cells = [fmt(s[m][k]) for m in ("strict", "lenient") for k in ("precision", "recall", "f1", "r_value")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Features (%): ABX error (lower is better), linear phone probe accuracy", "",
              "| model | level | ABX within (triplets) | ABX across (triplets) | probe accuracy |", "|---|---|---|---|---|"]
    for method, r in results.items():
        for level in ("low", "high"):
            if level in r.get("abx", {}):
                abx = {m: f"{fmt(r['abx'][level][m]['error'])} ({r['abx'][level][m]['triplets']})" for m in ("within", "across")}
                lines.append(f"| {LABELS[method]} | {level} | {abx['within']} | {abx['across']} | "
                             f"{fmt(r['probe'][level]['accuracy'])} |")
    rows = dict(segmentation_rows(results))
    baselines = [v for k, v in rows.items() if not k.startswith("hCPC")]
    for name, mine in rows.items():
        if name.startswith("hCPC") and baselines:
            verdict = {m: all(mine[m]["r_value"] > b[m]["r_value"] for b in baselines) for m in ("strict", "lenient")}
            lines += ["", f"{name} beats both baselines on R-value: strict {verdict['strict']}, "
                          f"lenient {verdict['lenient']}."]
    if plot:
        lines += ["", f"![boundaries]({plot.name})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_utts, audio = load_split_audio(args.data, "train")
    mean_frames = mean_phone_frames(train_utts)
    steps = plan(args, audio, mean_frames)
    run = RunConfig(data=args.data, window=args.window, batch_size=args.batch_size)
    evaluation = EvalConfig(max_utterances=args.eval_utterances, probe_utterances=args.probe_utterances)
    results = {}
    for method in args.methods:
        out = args.runs / method
        train_run(model_config(args, method, steps, mean_frames), run, train_config(args, steps), out, audio)
        path = out / "eval.json"
        if not path.exists():
            write_json(path, evaluate(load_run(out).model, args.data, evaluation))
        results[method] = json.loads(path.read_text())
    plot = None
    hierarchical = [m for m in ("pg", "st") if m in results]
    if hierarchical:
        utt, method = load_speech(args.data, "test")[0], hierarchical[0]
        # the argmax decisions may be empty: the logit peaks the high-level features use
        prominence = results[method]["high_level_prominence"]
        predicted = load_run(args.runs / method).model.segment(read_audio(utt), prominence).boundaries
        seconds = FRAME / utt.sample_rate
        plot = plot_segmentation(read_audio(utt).numpy(), utt.sample_rate, [f * seconds for f in predicted],
                                 args.results / "hcpc_boundaries.png", [f * seconds for f in boundaries_in_frames(utt)],
                                 f"{utt.id}, {LABELS[method]}, peaks of its boundary logits")
    write_json(args.results / "hcpc_compare.json",
               {"command": sys.argv, "steps": steps, "mean_phone_frames": mean_frames, "results": results})
    write_text(args.results / "hcpc_compare.md", report(args, steps, results, mean_frames, plot))
    print(args.results / "hcpc_compare.md")


if __name__ == "__main__":
    main()
