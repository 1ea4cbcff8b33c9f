"""DMC retrofit variants side by side: the plain recipe against distillation, a trained subset and
short sequences early, on the same data, steps and evaluation windows.

    python benchmarks/dmc_retrofit.py --out runs/dmc_bench --variants plain distill attention \
        [RetrofitConfig flags shared by all variants]

Each variant is ``dynacomp dmc retrofit`` into OUT/VARIANT (resumable); OUT/summary.json gathers
the reports' headline numbers, and a markdown table is printed for docs/results/dmc_retrofit.md.

    python benchmarks/dmc_retrofit.py --curve runs/cr2/summary.json runs/cr3/report.json ... --png FILE

plots perplexity / base against the realised ratio over runs (of one variant, default plain, for
summary files).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from dynacomp.config import add_config_args, config_from_args
from dynacomp.dmc.retrofit import RetrofitConfig, report_summary, retrofit
from dynacomp.io import figure, write_json

VARIANTS = {
    "plain": {},
    "distill": {"distill": 1.0},
    "half_distill": {"distill": 0.5},
    "attention": {"train_params": "attention"},
    "qk": {"train_params": "qk"},
    "short_early": {"short_seq_len": 64},
}


def table(rows: dict[str, dict]) -> str:
    lines = ["| variant | target | realised ratio | base ppl | DMC ppl | ppl ratio | tokens | wall (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['target_cr']:g} | {r['compression_ratio']:.2f} | {r['base_perplexity']:.2f} | "
                     f"{r['dmc_perplexity']:.2f} | {r['perplexity_ratio']:.3f} | {r['tokens_trained']} | "
                     f"{r['wall_time_s'] / 60:.1f} |")
    return "\n".join(lines)


def curve_point(record: dict, variant: str) -> dict:
    """The headline numbers of a run: a retrofit's report.json, or one variant of a summary.json."""
    return report_summary(record) if "compression_ratio" in record else record[variant]


def plot_curve(summaries: list[Path], variant: str, png: Path, title: str) -> None:
    """Perplexity ratio against realised compression ratio, one point per summary or report file."""
    rows = sorted((curve_point(json.loads(p.read_text()), variant) for p in summaries), key=lambda r: r["target_cr"])
    with figure(png, figsize=(4.5, 3.2)) as (_, ax):
        ax.plot([r["compression_ratio"] for r in rows], [r["perplexity_ratio"] for r in rows], "o-")
        for r in rows:
            ax.annotate(f"target {r['target_cr']:g}", (r["compression_ratio"], r["perplexity_ratio"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
        ax.axhline(1.10, color="gray", linestyle="--", linewidth=0.8, label="1.10 x base")
        ax.set_xlabel("realised compression ratio (test, hard decisions)")
        ax.set_ylabel("perplexity / base perplexity")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variants", nargs="+", default=["plain", "distill", "attention"], choices=VARIANTS)
    parser.add_argument("--curve", type=Path, nargs="+",
                        help="summary.json (of this script) or report.json (of a retrofit) files to plot instead "
                             "of training")
    parser.add_argument("--png", type=Path, help="with --curve: the PNG to write")
    parser.add_argument("--title", default="DMC retrofit of SmolLM2-135M", help="with --curve: the plot title")
    add_config_args(parser, RetrofitConfig)
    args = parser.parse_args()
    if args.curve:
        plot_curve(args.curve, args.variants[0] if len(args.variants) == 1 else "plain", args.png, args.title)
        return
    if args.out is None:
        parser.error("--out is required (unless --curve)")
    base = config_from_args(RetrofitConfig, args)
    summary_path = args.out / "summary.json"
    for name in args.variants:
        command = shlex.join(["python", *sys.argv]) + f"  # variant {name}"
        report = retrofit(replace(base, **VARIANTS[name]), args.out / name, command=command)
        # Re-read: variants may run as parallel processes into the same OUT.
        rows = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        rows[name] = report_summary(report)
        write_json(summary_path, rows)
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
