"""Ship a retrofitted checkpoint as a delta over its base model, and measure what the delta loses.

Writes src/dynacomp/dmc/shipped/NAME.safetensors (``dynacomp.dmc.delta.write_delta``) with the
given decision threshold (and, for DMS, eviction window), then scores the full checkpoint and the rebuilt delta on the same
held-out tokens through their caches (perplexity and tokens per slot) and prints both as JSON.

    python benchmarks/ship_delta.py --checkpoint runs/dms4/model --name smollm2-135m-dms4 --threshold 0.594
    python benchmarks/ship_delta.py --checkpoint runs/dms4_probe/model --name smollm2-135m-dms4-probe \
        --threshold -1.66 --eviction-window 256 --context 2048
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from dynacomp.dmc import convert, load
from dynacomp.dmc.delta import SHIPPED, load_delta, write_delta
from dynacomp.dmc.retrofit.recipe import load_text, read_through_caches
from dynacomp.models import DEFAULT_MODEL, load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--name", required=True, help="the shipped name")
    parser.add_argument("--threshold", type=float, required=True, help="decision threshold stored with the delta")
    parser.add_argument("--eviction-window", type=int, default=None, help="DMS: the window stored with the delta")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--base", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="manpages", help="held-out text scored (its validation split)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()

    model, tokenizer = load(args.checkpoint)
    window = {"eviction_window": args.eviction_window} if args.eviction_window else {}
    convert(model, replace(model.dmc_config, decision_threshold=args.threshold, **window))
    base, _ = load_causal_lm(args.base)
    path = SHIPPED / f"{args.name}.safetensors"
    report = write_delta(model, base, path, args.base, rank=args.rank)
    ids = torch.tensor(tokenizer(load_text(args.data, "validation"), add_special_tokens=False)["input_ids"])
    for name, scored in (("full_checkpoint", model), ("rebuilt_delta", load_delta(path)[0])):
        result, seen, slots = read_through_caches(scored, ids[:args.tokens], args.context, 4)
        report[name] = {"perplexity": result["perplexity"], "compression_ratio": seen * slots.numel() / float(slots.sum())}
    print(json.dumps(vars(args) | report, indent=2))


if __name__ == "__main__":
    main()
