"""What bfloat16 costs in quality: the same caches in float32 and bfloat16 (weights and KV pages
alike, as ``dmc bench --dtype`` times them), perplexity on the same windows of a test split, and
the paired bootstrap 95 % interval of bfloat16 / float32 per cache. The caches: dense (compression
off), DMC merging at a forced ratio (the throughput tables' setting), and the shipped DMS model
holding a ratio with keep_share (the learned policy a user would run).

    python benchmarks/precision_quality.py --corpus english --context 2048 --max-tokens 32768 \\
        --out docs/results/precision_quality.md
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import torch
from common import machine

from dynacomp.data.text import load_split
from dynacomp.dmc import load
from dynacomp.dmc.cache.control import keep_share_for_ratio
from dynacomp.dmc.evaluation.harness import EvalOptions, perplexity_online
from dynacomp.io import write_json, write_text
from dynacomp.metrics.intervals import paired_perplexity_ratio
from dynacomp.models import load_causal_lm

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def caches(args, dtype: torch.dtype) -> tuple[object, list[tuple[str, torch.nn.Module, str, float]]]:
    """The base model's tokenizer, and (label, model, method, ratio) of each cache compared, loaded in ``dtype``."""
    base, tokenizer = load_causal_lm(args.base, dtype=dtype)
    keep = keep_share_for_ratio(args.ratio, args.context, args.eviction_window)
    learned, _ = load(args.checkpoint, dtype=dtype, eviction_window=args.eviction_window, keep_share=keep,
                      hold_keep=None)
    return tokenizer, [("dense", base, "vanilla", 1.0),
                       (f"DMC x{args.ratio:g} (forced)", base, "dmc_forced", args.ratio),
                       (f"DMS {args.checkpoint}, keep_share {keep:.3f}", learned, "dms", 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--checkpoint", default="smollm2-135m-dms4-probe", help="the DMS model compared")
    parser.add_argument("--eviction-window", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=4.0, help="DMC's forced ratio, and the one DMS holds")
    parser.add_argument("--corpus", default="english", help="its test split is scored")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=64, help="tokens per forward after the first (DMS, DMC)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/precision_quality.md"))
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = machine("cpu")
    options = EvalOptions(max_tokens=args.max_tokens, chunk=args.chunk)
    text = load_split(args.corpus, "test")
    results: dict[str, dict[str, dict]] = {}
    with torch.no_grad():
        for name, dtype in DTYPES.items():
            tokenizer, compared = caches(args, dtype)
            ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
            for label, model, method, cr in compared:
                row = perplexity_online(model, ids, method, cr, args.context, options)
                results.setdefault(label, {})[name] = row
                print(f"{label} {name}: ppl {row['perplexity']:.4f} at ratio {row['ratio']:.2f}", file=sys.stderr)
    lines = ["# Perplexity in bfloat16 against float32", "", f"- Command: `{command}`", f"- Machine: {header}",
             f"- Date: {started.date().isoformat()} ({started:%H:%M} UTC start)", "",
             f"{args.corpus} test split, context {args.context}, the same {args.max_tokens} tokens for every cell; "
             "weights and KV pages in the row's dtype; bf16 / fp32 with a paired bootstrap 95 % interval over "
             "windows:", "",
             "| cache | memory ratio fp32 / bf16 | perplexity fp32 | perplexity bf16 | bf16 / fp32 (95 % CI) |",
             "|---|---|---|---|---|"]
    for label, rows in results.items():
        fp32, bf16 = rows["float32"], rows["bfloat16"]
        paired = paired_perplexity_ratio(bf16["window_nll"], fp32["window_nll"], fp32["window_tokens"])
        rows["bf16_vs_fp32"] = paired
        lines.append(f"| {label} | {fp32['ratio']:.2f} / {bf16['ratio']:.2f} | {fp32['perplexity']:.4f} | "
                     f"{bf16['perplexity']:.4f} | {paired['ratio']:.4f} [{paired['low']:.4f}, {paired['high']:.4f}] |")
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": header, "date": started.isoformat(),
                                                "results": results})
    write_text(args.out, "\n".join(lines + [""]))


if __name__ == "__main__":
    main()
