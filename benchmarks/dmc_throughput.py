"""DMC decode throughput against transformers' generate and dynacomp's dense loop.

    python benchmarks/dmc_throughput.py --batch 16 --contexts 1024 2048 4096 --crs 1 2 4 8 \
        --kv-budget-gb 0.5 --out docs/results/dmc_throughput.md

Every (context, method, ratio) runs in its own worker process, one after the other in this run;
the table reports medians of the timed decode steps and ratios between rows of the same context.
Writes the markdown table, a JSON file and ``*_throughput.png`` (tokens/s against context).
Each row also states the bytes a decode step must read (every weight once, the cache's stored
entries) and the floor they set at the read bandwidth measured in this run (a streaming sum of a
2 GiB buffer), and the achieved fraction of it (floor / step time).
Workers run minutes apart, so the machine's drift enters the ratios between rows; ``--paired``
measures vanilla and DMC at the given ratios in one worker with their steps taken in turn instead:

    python benchmarks/dmc_throughput.py --contexts 4096 --methods --paired 1 2 4 8 --new-tokens 32 \
        --out docs/results/dmc_paired_4096.md

``--dtype bfloat16`` runs every method's weights and caches in bfloat16; ``--device cuda`` runs on a GPU
(peak memory is then the CUDA allocator's, not the resident set).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

from common import machine, read_bandwidth

from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.evaluation.bench import BenchConfig, measure_in_worker, run
from dynacomp.io import figure, write_json, write_text
from dynacomp.runtime import DTYPES, Device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--crs", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--methods", nargs="*", default=list(BenchConfig.methods), choices=list(BenchConfig.methods))
    parser.add_argument("--page-size", type=int, default=DMCConfig.page_size)
    parser.add_argument("--device", default=BenchConfig.device, choices=get_args(Device))
    parser.add_argument("--dtype", default=BenchConfig.dtype, choices=list(DTYPES))
    parser.add_argument("--kv-budget-gb", type=float, default=0.0,
                        help="also find each method's largest batch within this KV budget, at the shortest context "
                             "(the prefill of a large batch at the longest one would dominate the run)")
    parser.add_argument("--paired", type=float, nargs="*", default=[],
                        help="DMC ratios also measured with vanilla in one process, steps taken in turn, "
                             "at the longest context")
    parser.add_argument("--out", type=Path, default=Path("docs/results/dmc_throughput.md"),
                        help="generated table (docs/results/dmc_benchmarks.md is the hand-written page)")
    args = parser.parse_args()

    rows, budgets = [], []
    for context in args.contexts:
        config = BenchConfig(model=args.model, batch=args.batch, context=context, new_tokens=args.new_tokens,
                             cr=tuple(args.crs), methods=tuple(args.methods), page_size=args.page_size,
                             device=args.device, dtype=args.dtype,
                             kv_budget_gb=args.kv_budget_gb if context == min(args.contexts) else 0.0)
        result = run(config, progress=lambda r: print(f"{r['context']:>6} {r['method']:<12} cr {r['cr']:.2f}: "
                                                      f"{r['tokens_per_s']:.1f} tok/s", file=sys.stderr))
        rows += result["rows"]
        budgets += result.get("max_batch", [])

    paired = measure_in_worker("paired", args.paired, replace(config, context=max(args.contexts))) if args.paired else None

    bandwidth = read_bandwidth(args.device)
    for r in rows + ([paired["vanilla"], *paired["dmc"]] if paired else []):
        r["floor_seconds"] = r["bytes_read_per_step"] / bandwidth
        r["floor_fraction"] = r["floor_seconds"] / r["step_seconds"]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    host = machine(args.device)
    date = datetime.date.today().isoformat()
    lines = [f"# DMC decode throughput\n\nCommand: `{command}`  \nMachine: {host}  \nDate: {date}  \n"
             f"Model: {args.model} in {args.dtype} on {args.device}, batch {args.batch}, {args.new_tokens} timed "
             f"decode steps (medians), page size {args.page_size}. Read bandwidth measured in this run: "
             f"{bandwidth / 1e9:.1f} GB/s; floor = bytes a step must read / that bandwidth.\n"]
    if rows:
        memory = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
        lines += [f"| context | method | ratio | tokens/s | s/step | floor s | step / floor | attention share | KV MiB "
                  f"| {memory} | × generate | × static | × vanilla |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        def times(r: dict, reference: str) -> str:   # "–" where that method was not run
            return f"{r[f'speedup_vs_{reference}']:.2f}" if f"speedup_vs_{reference}" in r else "–"

        lines += [f"| {r['context']} | {r['method']} | {r['cr']:.2f} | {r['tokens_per_s']:.1f} | "
                  f"{r['step_seconds']:.3f} | {r['floor_seconds']:.3f} | {1 / r['floor_fraction']:.1f} | "
                  f"{r['attention_share']:.0%} | {r['kv_bytes'] / 2**20:.0f} | "
                  f"{r['peak_memory_bytes'] / 2**20:.0f} | {times(r, 'hf_generate')} | {times(r, 'hf_static')} | "
                  f"{times(r, 'vanilla')} |"
                  for r in rows]
        plot = args.out.parent / f"{args.out.stem}_throughput.png"
        plot_throughput(rows, plot, title=f"{args.model}, batch {args.batch}, {args.dtype}")
        lines.append(f"\n![throughput]({plot.name})")
    if budgets:
        lines += [f"\n## Largest batch within {args.kv_budget_gb} GiB of KV cache (context {min(args.contexts)})\n",
                  "| method | ratio | max batch | tokens/s |", "|---|---|---|---|"]
        lines += [f"| {b['method']} | {b['cr']:.2f} | {b['max_batch']} | {b.get('tokens_per_s', 0):.1f} |"
                  for b in budgets]
    if paired:
        dense = paired["vanilla"]
        lines += [f"\n## Vanilla and DMC in one process, steps taken in turn (context {paired['context']})\n",
                  "| method | ratio | tokens/s | s/step | floor s | step / floor | attention share | KV MiB "
                  "| × vanilla (median of rounds) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['cr']:.2f} | {r['tokens_per_s']:.1f} | {r['step_seconds']:.3f} | "
                  f"{r['floor_seconds']:.3f} | {1 / r['floor_fraction']:.1f} | {r['attention_share']:.0%} | "
                  f"{r['kv_bytes'] / 2**20:.0f} | {r.get('speedup_vs_vanilla', 1.0):.2f} |"
                  for r in [dense, *paired["dmc"]]]
    write_text(args.out, "\n".join(lines) + "\n")
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": host, "date": date,
                                               "read_bandwidth_bytes_per_s": bandwidth,
                                               "rows": rows, "max_batch": budgets, "paired": paired})
    print(args.out.read_text())


def plot_throughput(rows: list[dict], path: Path, title: str) -> None:
    """Tokens/s against context per method and ratio; for a single context, DMC against its ratio
    with the dense methods as levels."""
    with figure(path, figsize=(6, 4)) as (_, axis):
        if len({r["context"] for r in rows}) > 1:
            series: dict[str, list] = {}
            for r in rows:
                label = r["method"] if r["method"] != "dmc" else f"dmc cr {r['cr']:.1f}"
                series.setdefault(label, []).append((r["context"], r["tokens_per_s"]))
            for label, points in series.items():
                axis.plot(*zip(*sorted(points)), marker="o", label=label)
            axis.set(xlabel="context (tokens)")
        else:
            dmc = sorted((r["cr"], r["tokens_per_s"]) for r in rows if r["method"] == "dmc")
            if dmc:
                axis.plot(*zip(*dmc), marker="o", label="dmc")
            for r, style in zip((r for r in rows if r["method"] != "dmc"), ("--", ":", "-.")):
                axis.axhline(r["tokens_per_s"], linestyle=style, color="grey", label=r["method"])
            axis.set_xscale("log", base=2)
            axis.set_xticks([x for x, _ in dmc], [f"{x:.0f}" for x, _ in dmc], minor=False)
            axis.minorticks_off()
            axis.set(xlabel=f"compression ratio (context {rows[0]['context']})")
        axis.set(ylabel="decode tokens/s", title=title)
        axis.legend()


if __name__ == "__main__":
    main()
