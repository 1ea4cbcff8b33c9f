"""Where a decode step's milliseconds go: torch.profiler's per-op self time for the dense loop (a
StaticCache) and DMC at a forced ratio, same prompt, batch and context, steps taken in turn.

    python benchmarks/decode_profile.py --batch 16 --context 4096 --cr 4 --out docs/results/decode_profile.md

Per op: calls and self time per step, and its share of the step; the matrix products' share is
what the weights' read costs, attention and the cache bookkeeping are the rest.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import shlex
import sys
from pathlib import Path

import torch
from common import machine
from torch.profiler import ProfilerActivity, profile

from dynacomp.dmc import convert
from dynacomp.dmc.evaluation.bench import BenchConfig, GreedyDecoder, _dense_cache, _load, prompt_ids
from dynacomp.io import write_text
from dynacomp.runtime import DTYPES


def op_table(decoder: GreedyDecoder, steps: int, rows: int) -> tuple[list[str], float]:
    """Markdown rows of the ``rows`` costliest ops over ``steps`` decode steps, and ms per step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            decoder.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1000:.2f} | "
             f"{e.self_cpu_time_total / total:.0%} |" for e in events[:rows]]
    return lines, total / steps / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--cr", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=8, help="profiled decode steps of each")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--rows", type=int, default=15, help="ops listed per table")
    parser.add_argument("--out", type=Path, default=Path("docs/results/decode_profile.md"))
    args = parser.parse_args()

    config = BenchConfig(model=args.model, batch=args.batch, context=args.context, new_tokens=args.steps + 1,
                         cr=(args.cr,), dtype=args.dtype)
    model, tokenizer, dmc_config = _load(config, args.cr)
    ids = prompt_ids(tokenizer, config.batch, config.context)
    with torch.no_grad():
        dmc_model = convert(copy.deepcopy(model), dmc_config)
        decoders = {"dense (StaticCache)": GreedyDecoder(model, ids, _dense_cache(model, config)),
                    f"DMC x{args.cr:g} (forced)": GreedyDecoder(dmc_model, ids, dmc_model.new_cache())}
        for decoder in decoders.values():       # warm both before profiling either
            decoder.step()
        tables = {name: op_table(decoder, args.steps, args.rows) for name, decoder in decoders.items()}

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Where a decode step's time goes", "", f"- Command: `{command}`", f"- Machine: {machine()}",
             f"- Date: {datetime.date.today().isoformat()}",
             f"- {args.model} in {args.dtype}, batch {args.batch}, context {args.context}, {args.steps} profiled steps "
             "(self CPU time per op, the profiler's own overhead included)", ""]
    for name, (rows, per_step) in tables.items():
        lines += [f"## {name}: {per_step:.1f} ms of op time per step", "",
                  "| op | calls / step | ms / step | share |", "|---|---|---|---|", *rows, ""]
    write_text(args.out, "\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
