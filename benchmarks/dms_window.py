"""DMS's eviction window at inference: one retrofitted checkpoint read with windows of W tokens and
several decision thresholds (each a memory ratio), H2O on the base model at the ratios DMS realised,
on held-out text of a domain the retrofit never saw. A short ranking run (a few windows), not the
claim's measurement (benchmarks/learned_vs_eviction.py).

With ``--hold-target R`` it also compares the two ways of asking for ratio R without looking at the
evaluated text: the threshold calibrated on the training mixture, and the per-layer kept shares
found there and held by ranking (``calibrate_hold``, at two control windows).

    python benchmarks/dms_window.py --checkpoint runs/dms4/model --windows 64 128 256 512 \\
        --thresholds -1 0 1 --corpus manpages --split validation --max-tokens 4096 --hold-target 4 \\
        --out docs/results/dms_window.md
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
from common import machine

from dynacomp.data.text import load_split
from dynacomp.dmc import convert, load
from dynacomp.dmc.evaluation.harness import EvalOptions, perplexity_online
from dynacomp.dmc.retrofit.recipe import calibrate_hold, load_text
from dynacomp.io import write_json, write_text
from dynacomp.models import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a retrofitted DMS checkpoint")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--windows", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[-1.0, 0.0, 1.0])
    parser.add_argument("--corpus", default="manpages")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=64, help="tokens per forward for H2O")
    parser.add_argument("--hold-target", type=float, default=None, help="also compare threshold and held shares at this ratio")
    parser.add_argument("--hold-window", type=int, default=256, help="eviction window of that comparison")
    parser.add_argument("--calibrate-on", default="english+austen+bible", help="the retrofit's training mixture")
    parser.add_argument("--out", type=Path, default=Path("docs/results/dms_window.md"))
    args = parser.parse_args()

    learned, tokenizer = load(args.checkpoint)
    base, _ = load_causal_lm(args.base)
    ids = torch.tensor(tokenizer(load_split(args.corpus, args.split), add_special_tokens=False)["input_ids"])
    options = EvalOptions(batch_size=2, max_tokens=args.max_tokens, chunk=args.chunk)
    config, rows = learned.dmc_config, []

    def score(model, method: str, cr: float, **setting) -> dict:
        result = perplexity_online(model, ids, method, cr, args.context, options)
        rows.append({**setting, "method": method, "perplexity": result["perplexity"], "ratio": result["ratio"],
                     "tokens": result["tokens"]})
        print(rows[-1], file=sys.stderr)
        return rows[-1]

    score(base, "vanilla", 1)
    score(convert(learned, replace(config, decision_threshold=float("inf"))), "dms", 1, window=None)
    for window in args.windows:
        for threshold in args.thresholds:
            mine = score(convert(learned, replace(config, eviction_window=window, decision_threshold=threshold)),
                         "dms", 1, window=window, threshold=threshold)
            score(base, "h2o", mine["ratio"], window=window, threshold=threshold)

    held = []
    if args.hold_target:
        model = convert(learned, replace(config, eviction_window=args.hold_window))
        text = torch.tensor(tokenizer(load_text(args.calibrate_on, "validation"), add_special_tokens=False)["input_ids"])
        keep, realised = calibrate_hold(model, text[:8192], args.hold_target, args.context, 4, steps=10, bound=64.0)
        calibrated = model.dmc_config
        held.append(score(convert(model, replace(calibrated, hold_keep=None)), "dms", 1, setting="threshold",
                          threshold=calibrated.decision_threshold, in_domain=realised))
        for control in (256, args.context):
            held.append(score(convert(model, replace(calibrated, control_window=control)), "dms", 1,
                              setting=f"held shares, control window {control}", keep=list(keep)))
        held += [score(base, "h2o", row["ratio"], setting="H2O") for row in list(held)]

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = {"command": command, "machine": machine(), "date": datetime.date.today().isoformat()}
    write_json(args.out.with_suffix(".json"), {**header, "rows": rows})
    vanilla, off = rows[0]["perplexity"], rows[1]["perplexity"]
    lines = [f"# DMS eviction window at inference: {args.checkpoint}", "", f"- Command: `{command}`",
             f"- Machine: {header['machine']}", f"- Date: {header['date']}",
             f"- {args.corpus} {args.split} split, {rows[0]['tokens']} scored tokens, context {args.context} "
             f"(a ranking run); unmodified model {vanilla:.3f}, DMS weights with compression off {off:.3f}", "",
             "| window | threshold | DMS ratio | DMS perplexity | H2O at that ratio | DMS / H2O |", "|---|---|---|---|---|---|"]
    sweep = rows[2:len(rows) - len(held)]
    for mine, peer in zip(sweep[::2], sweep[1::2]):
        lines.append(f"| {mine['window']} | {mine['threshold']:g} | {mine['ratio']:.2f} | {mine['perplexity']:.3f} | "
                     f"{peer['perplexity']:.3f} | {mine['perplexity'] / peer['perplexity']:.3f} |")
    if held:
        mine, peers = held[:len(held) // 2], held[len(held) // 2:]
        lines += ["", f"Asking for ratio {args.hold_target:g} without looking at this text (window {args.hold_window}; "
                  f"calibrated on {args.calibrate_on}, validation, where the threshold {mine[0]['threshold']:.3g} "
                  f"realises {mine[0]['in_domain']:.2f}):", "",
                  "| how | ratio here | DMS perplexity | H2O at that ratio |", "|---|---|---|---|"]
        lines += [f"| {m['setting']} | {m['ratio']:.2f} | {m['perplexity']:.3f} | {p['perplexity']:.3f} |"
                  for m, p in zip(mine, peers)]
    write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
