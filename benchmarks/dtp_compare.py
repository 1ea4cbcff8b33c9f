"""Dynamic token pooling: every boundary source trained the same number of steps, or the same
FLOPs, side by side.

    python benchmarks/dtp_compare.py --minutes 30                 # the acceptance run (~4 h)
    python benchmarks/dtp_compare.py --minutes 1 --runs runs/smoke/dtp --results runs/smoke/dtp/results   # a smoke run
    python benchmarks/dtp_compare.py --equal-flops 1280 --runs runs/dtp_flops   # equal compute (issue #24)

Phases, each resumable (re-running the same command continues where it stopped):

1. plan: the number of steps, timed on vanilla (the slowest) so each run takes about --minutes;
   kept in RUNS/plan.json so that every method and every re-run gets the same count. With
   --equal-flops N, every run instead trains until it has spent the FLOPs of N vanilla steps
   (``dynacomp.dtp.flops``, each step counted at its realised shortening), its cosine schedule
   spanning them (``dynacomp.train.budget``; warm-up, logging and checkpoints as for N steps);
2. train each run (``data:method``) with ``dynacomp.train`` into RUNS/<data>-<method>/;
3. test BPC and shortening factor with the paper's protocol (windows with a stride); Gumbel runs
   also at the threshold that reproduces their training boundary rate on the validation split;
4. training throughput of the *trained* models (their learned boundary rates), all methods timed
   in this one process, interleaved over --rounds rounds (median);
5. generation speed, cached and uncached, against vanilla.

Writes RESULTS/dtp_compare.md and .json, RESULTS/dtp_curves.png (training BPC against FLOPs, or
steps for runs from before FLOPs were counted, and against training wall-clock) and
RESULTS/dtp_boundaries_<method>.png (docs/results/dtp.md is the hand-written page that reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from dynacomp.dtp import DTPConfig, RunConfig, load_run, train_run
from dynacomp.dtp.data import load_data
from dynacomp.dtp.eval import EvalConfig
from dynacomp.dtp.flops import train_step_flops
from dynacomp.dtp.plot import plot_boundaries
from dynacomp.dtp.recipe import DTPTask, evaluate_run
from dynacomp.dtp.sample import generation_speed
from dynacomp.io import figure, write_json, write_text
from dynacomp.train import TrainConfig, load_weights, train

METHODS = {
    "vanilla": dict(boundaries="none"),
    "fixed2": dict(boundaries="fixed", fixed_k=2),
    "fixed4": dict(boundaries="fixed", fixed_k=4),
    "whitespace": dict(boundaries="whitespace"),
    "unigram": dict(boundaries="unigram"),
    "entropy": dict(boundaries="entropy"),
    "gumbel": dict(boundaries="gumbel"),
}
PRIOR = {"fi": 0.37}  # the paper's Gumbel prior per language; 0.2 elsewhere


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30, help="training time per run, timed on vanilla")
    p.add_argument("--steps", type=int, default=0, help="training steps per run (0: from --minutes)")
    p.add_argument("--equal-flops", type=int, default=0, metavar="N", help="equal compute instead of equal steps: "
                   "every run trains on the FLOPs of N vanilla steps (issue #24: 1280, the equal-steps plan's count)")
    p.add_argument("--data", default="english", help="data of the main comparison")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--extra", nargs="*", default=["hebrew:unigram"], help="more runs as DATA:METHOD")
    p.add_argument("--runs", type=Path, default=Path("runs/dtp_compare"), help="run folders")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="where dtp_compare.md and friends go")
    p.add_argument("--layers", type=int, nargs=3, default=[2, 8, 2], metavar=("PRE", "MID", "POST"))
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order; another seed in another "
                   "--runs folder measures the seed-to-seed spread")
    p.add_argument("--eval-chars", type=int, default=0, help="test characters to score, and validation characters "
                   "Gumbel's threshold is chosen on (0: all)")
    p.add_argument("--throughput-steps", type=int, default=20, help="steps per throughput timing")
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    p.add_argument("--gen-chars", type=int, default=200, help="characters per generation timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); one thread "
                   "keeps timings steady on a machine shared with other jobs")
    return p.parse_args()


def model_config(args: argparse.Namespace, method: str, language: str) -> DTPConfig:
    pre, mid, post = args.layers
    return DTPConfig(n_pre=pre, n_mid=mid, n_post=post, d_model=args.d_model, n_heads=args.n_heads,
                     d_ff=args.d_ff, prior=PRIOR.get(language, 0.2), **METHODS[method])


def train_config(args: argparse.Namespace, steps: int, budget_flops: float = 0) -> TrainConfig:
    """The paper's optimiser settings (Adam 0.9/0.999, no weight decay, clip 0.25, cosine to 0);
    with ``budget_flops`` the run stops once it is spent, its schedule spanning it."""
    return TrainConfig(steps=steps, budget_flops=budget_flops, lr=args.lr, seed=args.seed, warmup_steps=max(1, steps // 20),
                       weight_decay=0.0, beta2=0.999, grad_clip=0.25, min_lr_ratio=0.0,
                       log_every=max(1, min(50, steps // 20)),
                       checkpoint_every=max(1, steps // 5), keep_checkpoints=1)


def timed_steps(args: argparse.Namespace, data: str, config: DTPConfig, steps: int,
                weights: Path | None = None) -> float:
    """Training characters per second over ``steps`` steps of the one training loop, in a scratch folder."""
    run = RunConfig(data=data, seq_len=args.seq_len, batch_size=args.batch_size, eval_stride=args.seq_len // 4)
    chars = load_data(data)
    config = dataclasses.replace(config, vocab_size=len(chars.vocab), whitespace_ids=chars.whitespace_ids)
    task = DTPTask(config, run, chars)
    if weights is not None:
        load_weights(task.model, weights)
    with tempfile.TemporaryDirectory() as scratch:
        result = train(task, TrainConfig(steps=steps, lr=1e-5, warmup_steps=0, log_every=steps,
                                         checkpoint_every=0, keep_checkpoints=1), scratch, resume=False)
    return result.metrics["tokens_per_s"]


def vanilla_step_flops(args: argparse.Namespace) -> int:
    """FLOPs of one training step of the vanilla model on ``args.data``."""
    config = dataclasses.replace(model_config(args, "vanilla", "en"), vocab_size=len(load_data(args.data).vocab))
    return train_step_flops(config, args.batch_size, args.seq_len)


def plan(args: argparse.Namespace) -> dict:
    """``{"steps", "basis"}`` and, for equal compute, ``budget_flops``: the step count (or FLOP
    budget) of every run, made once per runs folder."""
    path = args.runs / "plan.json"
    if path.exists():
        planned = json.loads(path.read_text())
        if bool(args.equal_flops) != ("budget_flops" in planned):
            sys.exit(f"error: {path} plans {planned['basis']}: use another --runs folder for "
                     f"{'--equal-flops' if args.equal_flops else 'equal steps'}")
        return planned
    if args.equal_flops:
        per_step = vanilla_step_flops(args)
        planned = {"steps": args.equal_flops, "budget_flops": args.equal_flops * per_step,
                   "basis": f"the FLOPs of {args.equal_flops} vanilla steps, {per_step:,} each"}
        write_json(path, planned)
        return planned
    if args.steps:
        steps = args.steps
    else:
        timed_steps(args, args.data, model_config(args, "vanilla", "en"), 2)  # warm-up
        chars_per_s = timed_steps(args, args.data, model_config(args, "vanilla", "en"), 10)
        steps = max(1, int(args.minutes * 60 * chars_per_s / (args.seq_len * args.batch_size)))
    planned = {"steps": steps, "basis": f"{args.steps} steps asked" if args.steps else
               f"about {args.minutes:g} min of vanilla, timed at the start"}
    write_json(path, planned)
    return planned


def run_name(data: str, method: str) -> str:
    """A folder name: data names may hold paths (text8:/data/text8)."""
    return f"{data}-{method}".replace("/", "_").replace(":", "_")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = datetime.datetime.now(datetime.UTC)
    host = machine()
    runs = [(args.data, m) for m in args.methods] + [tuple(e.rsplit(":", 1)) for e in args.extra]
    planned = plan(args)
    steps = planned["steps"]
    print(f"{len(runs)} runs, each of {planned['basis']}", file=sys.stderr)

    rows = []
    for data, method in runs:
        folder = args.runs / run_name(data, method)
        language = load_data(data).language
        run = RunConfig(data=data, seq_len=args.seq_len, batch_size=args.batch_size, eval_stride=args.seq_len // 4)
        t0 = time.perf_counter()
        result = train_run(model_config(args, method, language), run,
                           train_config(args, steps, planned.get("budget_flops", 0)), folder)
        eval_path = folder / "eval.json"
        if not eval_path.exists():
            scores = evaluate_run(folder, load_run(folder), load_data(data),
                                  EvalConfig(split="test", max_chars=args.eval_chars, calibrate=method == "gumbel",
                                             calibrate_chars=args.eval_chars))
            write_json(eval_path, scores)
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        rows.append({"data": data, "method": method, "steps": result.step, "flops": metrics[-1].get("flops"),
                     "train_minutes": metrics[-1]["elapsed_s"] / 60 if metrics else (time.perf_counter() - t0) / 60,
                     "train_bpc": metrics[-1]["bpc"], **json.loads(eval_path.read_text()), "curve": curve(metrics)})
        print(f"{data}-{method}: test bpc {rows[-1]['bpc']:.4f}, SF {rows[-1]['shortening_factor']:.2f}", file=sys.stderr)

    # Side by side, in this one process, interleaved rounds: training throughput of the trained
    # models (at their learned boundary rates) and generation speed, cached and uncached.
    timings: dict[tuple[str, str], list[float]] = {}
    models = {key: load_run(args.runs / key).model for key in (run_name(r["data"], r["method"]) for r in rows)}
    for _ in range(args.rounds):
        for row in rows:
            key = run_name(row["data"], row["method"])
            chars = load_data(row["data"])
            config = model_config(args, row["method"], chars.language)
            timings.setdefault((key, "train"), []).append(
                timed_steps(args, row["data"], config, args.throughput_steps, args.runs / key))
            prompt = chars.splits["validation"][:40][None]
            for cached in (True, False):
                timings.setdefault((key, f"gen_{cached}"), []).append(
                    generation_speed(models[key], prompt, args.gen_chars, use_cache=cached))
    for row in rows:
        key, base = run_name(row["data"], row["method"]), run_name(row["data"], "vanilla")
        median = {kind: statistics.median(timings[(key, kind)]) for kind in ("train", "gen_True", "gen_False")}
        row["train_chars_per_s"] = median["train"]
        row["gen_cached_chars_per_s"], row["gen_uncached_chars_per_s"] = median["gen_True"], median["gen_False"]
        row["speedup"] = (median["train"] / statistics.median(timings[(base, "train")])
                          if (base, "train") in timings else None)

    report(args, rows, planned, command, host, started)


def curve(metrics: list[dict]) -> list[dict]:
    """Training BPC at each metrics line, with the step, the FLOPs counted (None in runs from before
    they were) and the training wall-clock: each logging interval's steps at its measured speed, so
    the time a run spent killed and the start-up after a resume are left out."""
    points, seconds, previous = [], 0.0, 0
    for m in metrics:
        seconds += (m["step"] - previous) / m["steps_per_s"]
        previous = m["step"]
        points.append({"step": m["step"], "flops": m.get("flops"), "minutes": seconds / 60, "bpc": m["bpc"]})
    return points


def report(args, rows, planned, command, host, started) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    by_flops = all(point["flops"] is not None for row in rows for point in row["curve"])
    x_axes = [("flops", "training FLOPs") if by_flops else ("step", "step"), ("minutes", "training wall-clock, minutes")]
    with figure(args.results / "dtp_curves.png", figsize=(11, 4), ncols=2, sharey=True) as (_, axes):
        for ax, (key, label) in zip(axes, x_axes):
            for row in rows:
                ax.plot([p[key] for p in row["curve"]], [p["bpc"] for p in row["curve"]],
                        label=run_name(row["data"], row["method"]))
            ax.set_xlabel(label)
        axes[0].set_ylabel("training bits per character")
        axes[0].set_ylim(top=min(4.5, axes[0].get_ylim()[1]))
        axes[0].legend(fontsize=7)
        axes[0].set_title(f"{host.split(',')[0]}; {started:%Y-%m-%d}", fontsize=8)

    text_ids = load_data(args.data).splits["validation"][:240]
    for row in rows:
        if row["data"] == args.data and row["method"] != "vanilla":
            loaded = load_run(args.runs / run_name(row["data"], row["method"]))
            with torch.no_grad():
                b = loaded.model(text_ids[None]).boundaries[0].int().tolist()
            plot_boundaries("".join(loaded.record["vocab"][i] for i in text_ids.tolist()), b,
                            args.results / f"dtp_boundaries_{row['method']}.png", row["method"])

    vanilla = {r["data"]: r["bpc"] for r in rows if r["method"] == "vanilla"}
    lines = [
        "# Dynamic token pooling: six boundary sources on one harness",
        "",
        f"Command: `{command}`  ",
        f"Machine: {host}  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC  ",
        f"Model: {args.layers[0]}-{args.layers[1]}-{args.layers[2]} layers, d_model {args.d_model}, "
        f"{args.n_heads} heads, d_ff {args.d_ff}; batches of {args.batch_size} x {args.seq_len} characters, "
        + (f"every run trained on {planned['budget_flops']:.4g} FLOPs ({planned['basis']}), its cosine spanning them"
           if "budget_flops" in planned else f"{planned['steps']} steps for every run ({planned['basis']})")
        + f"; lr {args.lr}, Adam (0.9, 0.999), clip 0.25, cosine to 0.",
        f"Evaluation: test split, windows of {args.seq_len} every {args.seq_len // 4}, loss on the last "
        f"{args.seq_len // 4}. Throughput: training characters/s of the trained models, all measured in this "
        f"one process, median of {args.rounds} interleaved rounds of {args.throughput_steps} steps. Generation: "
        f"{args.gen_chars} greedy characters after 40 validation characters, batch 1, median of the same rounds.",
        "",
        "| data | method | test BPC | Δ vs vanilla | shortening | steps | training FLOPs | train chars/s | × vanilla "
        "| gen chars/s cached | gen uncached | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = f"{r['bpc'] - vanilla[r['data']]:+.4f}" if r["data"] in vanilla else "–"
        speedup = f"{r['speedup']:.2f}" if r["speedup"] else "–"
        flops = f"{r['flops']:.4g}" if r["flops"] is not None else "–"
        lines.append(f"| {r['data']} | {r['method']} | {r['bpc']:.4f} | {delta} | {r['shortening_factor']:.2f} | "
                     f"{r['steps']} | {flops} | {r['train_chars_per_s']:.0f} | {speedup} | "
                     f"{r['gen_cached_chars_per_s']:.0f} | {r['gen_uncached_chars_per_s']:.0f} | {r['train_minutes']:.1f} |")
    calibrated = [f"{r['data']} gumbel at its training boundary rate {c['train_boundary_rate']:.3f} (threshold "
                  f"{c['threshold']:.3f}, chosen on the validation split): test BPC {c['bpc']:.4f} at shortening "
                  f"{c['shortening_factor']:.2f}." for r in rows if (c := r.get("calibrated"))]
    lines += ["", *calibrated] if calibrated else []
    lines += ["", "Targets:", ""] + targets(rows, vanilla) + [
        "", "![training curves](dtp_curves.png)", "",
        *[f"![{r['method']} boundaries](dtp_boundaries_{r['method']}.png)" for r in rows
          if r["data"] == args.data and r["method"] != "vanilla"], ""]
    write_text(args.results / "dtp_compare.md", "\n".join(lines))
    write_json(args.results / "dtp_compare.json", {"command": command, "machine": host, "date": started.isoformat(),
                                                   **planned, "args": {k: str(v) for k, v in vars(args).items()},
                                                   "runs": rows})
    print(args.results / "dtp_compare.md")


def targets(rows: list[dict], vanilla: dict[str, float]) -> list[str]:
    out = []
    for r in rows:
        if r["method"] in ("whitespace", "unigram") and r["data"] in vanilla:
            ok = r["bpc"] <= vanilla[r["data"]]
            out.append(f"- {r['data']} {r['method']} BPC at or below vanilla's: "
                       f"{'met' if ok else 'MISSED'} ({r['bpc']:.4f} vs {vanilla[r['data']]:.4f})")
    near4 = [r for r in rows if r["speedup"] and abs(math.log(r["shortening_factor"] / 4)) < math.log(1.3)]
    for r in near4:
        out.append(f"- throughput at SF {r['shortening_factor']:.2f} ({r['data']} {r['method']}) at least 1.8x "
                   f"vanilla's: {'met' if r['speedup'] >= 1.8 else 'MISSED'} ({r['speedup']:.2f}x)")
    return out


if __name__ == "__main__":
    main()
