"""``dynacomp demo``: the main job on the embedded defaults, end to end and offline.

A short DMC retrofit of the embedded SmolLM2 (the three stages, a few minutes on 2 CPU cores),
its report (perplexity through the compressed cache, realised compression ratio, heat map), and a
generation from the retrofitted model with its cache statistics. A second run resumes the
finished retrofit and only re-evaluates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dynacomp.console import add_json_flag, emit, format_mapping

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune,"


def run(args: argparse.Namespace) -> int:
    from dynacomp.dmc import load
    from dynacomp.dmc.retrofit import demo, report_summary
    from dynacomp.io import cache_dir

    out = args.out or cache_dir("demo", "dmc_retrofit")
    report = demo(out)
    model, tokenizer = load(out / "model")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    cache = model.new_cache()
    with torch.no_grad():
        output = model.generate(**inputs, cache=cache, max_new_tokens=30, do_sample=False)
    stats = cache.stats()
    result = {
        "retrofit": report_summary(report) | {"out": str(out), "heat_map": str(out / "cr_heatmap.png")},
        "generation": {"prompt": PROMPT,
                       "continuation": tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True),
                       "compression_ratio": stats.compression_ratio, "kv_bytes": stats.allocated_bytes},
        "note": "a few minutes of training reach the ratio but not the quality; "
                "see docs/results/dmc_retrofit.md for real runs",
    }
    emit(result, args.json, format_mapping)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the main job on the embedded defaults",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the retrofit (default: $DYNACOMP_CACHE/demo/dmc_retrofit)")
    add_json_flag(parser)
    parser.set_defaults(func=run)
