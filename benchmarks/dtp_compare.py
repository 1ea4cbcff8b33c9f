"""Dynamic token pooling: every boundary source trained the same number of steps, side by side.

    python benchmarks/dtp_compare.py --minutes 30                 # the acceptance run (~4 h)
    python benchmarks/dtp_compare.py --minutes 1 --runs runs/smoke/dtp --results runs/smoke/dtp/results   # a smoke run

Phases, each resumable (re-running the same command continues where it stopped):

1. plan: the number of steps, timed on vanilla (the slowest) so each run takes about --minutes;
   kept in RUNS/plan.json so that every method and every re-run gets the same count;
2. train each run (``data:method``) with ``dynacomp.train`` into RUNS/<data>-<method>/;
3. test BPC and shortening factor with the paper's protocol (windows with a stride);
4. training throughput of the *trained* models (their learned boundary rates), all methods timed
   in this one process, interleaved over --rounds rounds (median);
5. generation speed, cached and uncached, against vanilla.

Writes RESULTS/dtp_compare.md and .json, RESULTS/dtp_curves.png and RESULTS/dtp_boundaries_<method>.png
(docs/results/dtp.md is the hand-written page that reads them).
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

from dynacomp.dtp import DTPConfig, RunConfig, evaluate, load_run, train_run
from dynacomp.dtp.data import load_data
from dynacomp.dtp.plot import plot_boundaries
from dynacomp.dtp.recipe import DTPTask
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
    p.add_argument("--eval-chars", type=int, default=0, help="test characters to score (0: all)")
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


def train_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The paper's optimiser settings (Adam 0.9/0.999, no weight decay, clip 0.25, cosine to 0)."""
    return TrainConfig(steps=steps, lr=args.lr, seed=args.seed, warmup_steps=max(1, steps // 20),
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


def plan(args: argparse.Namespace) -> dict:
    """``{"steps", "basis"}``: the step count of every run, made once per runs folder."""
    path = args.runs / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
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
    print(f"{len(runs)} runs of {steps} steps each ({planned['basis']})", file=sys.stderr)

    rows = []
    for data, method in runs:
        folder = args.runs / run_name(data, method)
        language = load_data(data).language
        run = RunConfig(data=data, seq_len=args.seq_len, batch_size=args.batch_size, eval_stride=args.seq_len // 4)
        t0 = time.perf_counter()
        result = train_run(model_config(args, method, language), run, train_config(args, steps), folder)
        eval_path = folder / "eval.json"
        if not eval_path.exists():
            loaded = load_run(folder)
            write_json(eval_path, evaluate(loaded.model, load_data(data).splits["test"], args.seq_len,
                                           run.eval_stride, max_chars=args.eval_chars))
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        rows.append({"data": data, "method": method, "steps": result.step,
                     "train_minutes": metrics[-1]["elapsed_s"] / 60 if metrics else (time.perf_counter() - t0) / 60,
                     "train_bpc": metrics[-1]["bpc"], **json.loads(eval_path.read_text()),
                     "curve": [(m["step"], m["bpc"]) for m in metrics]})
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


def report(args, rows, planned, command, host, started) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    with figure(args.results / "dtp_curves.png", figsize=(7, 4)) as (_, ax):
        for row in rows:
            ax.plot(*zip(*row["curve"]), label=run_name(row["data"], row["method"]))
        ax.set_xlabel("step")
        ax.set_ylabel("training bits per character")
        ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
        ax.legend(fontsize=7)
        ax.set_title(f"{host.split(',')[0]}; {started:%Y-%m-%d}", fontsize=8)

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
        f"{args.n_heads} heads, d_ff {args.d_ff}; {planned['steps']} steps of {args.batch_size} x {args.seq_len} "
        f"characters for every run ({planned['basis']}); lr {args.lr}, Adam (0.9, 0.999), clip 0.25, "
        "cosine to 0.",
        f"Evaluation: test split, windows of {args.seq_len} every {args.seq_len // 4}, loss on the last "
        f"{args.seq_len // 4}. Throughput: training characters/s of the trained models, all measured in this "
        f"one process, median of {args.rounds} interleaved rounds of {args.throughput_steps} steps. Generation: "
        f"{args.gen_chars} greedy characters after 40 validation characters, batch 1, median of the same rounds.",
        "",
        "| data | method | test BPC | Δ vs vanilla | shortening | train chars/s | × vanilla | gen chars/s cached "
        "| gen uncached | train min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = f"{r['bpc'] - vanilla[r['data']]:+.4f}" if r["data"] in vanilla else "–"
        speedup = f"{r['speedup']:.2f}" if r["speedup"] else "–"
        lines.append(f"| {r['data']} | {r['method']} | {r['bpc']:.4f} | {delta} | {r['shortening_factor']:.2f} | "
                     f"{r['train_chars_per_s']:.0f} | {speedup} | {r['gen_cached_chars_per_s']:.0f} | "
                     f"{r['gen_uncached_chars_per_s']:.0f} | {r['train_minutes']:.1f} |")
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
