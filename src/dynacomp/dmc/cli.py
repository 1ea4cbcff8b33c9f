"""``dynacomp dmc``: retrofit an LLM with Dynamic Memory Compression, and generate with it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dynacomp.config import add_config_args, config_from_args
from dynacomp.console import add_json_flag, emit, format_mapping
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.evaluation import bench as bench_module
from dynacomp.dmc.evaluation.cli import register_eval
from dynacomp.dmc.retrofit.config import CalibrateConfig
from dynacomp.errors import Failure, UsageError

RETROFIT_HELP = """\
Teach a pretrained LLM to merge its KV cache (DMC, arXiv 2403.09636) in the paper's three
stages, each resumable after a kill: zero_out (ramp the repurposed q/k channels to zero),
retrofit (target ratio rising linearly to --target-cr), finetune (fixed ratio). Runs under
torchrun (DDP; --strategy fsdp for large models). OUT gets model/ (the DMC checkpoint, for
`dynacomp dmc generate --model OUT/model`), report.json (base and DMC perplexity on the test
split, measured through the compressed cache with hard decisions; realised ratio per layer and
head; tokens; wall time; the command) and cr_heatmap.png.

example: dynacomp dmc retrofit --model smollm2-135m --data english --target-cr 2 --out runs/dmc2
         torchrun --nproc_per_node 2 -m dynacomp.cli dmc retrofit ... --strategy ddp
"""

GENERATE_HELP = """\
Generate text with a DMC model and print the cache statistics (tokens, slots, compression
ratio, bytes). MODEL is a DMC checkpoint folder (has dmc_config.json; DMC flags given here
override its settings) or any supported plain model (embedded name, folder, Hugging Face id),
converted on the fly with the DMC flags: a plain model has no trained decisions, so use
--force-cr to compress it.
"""


def run_retrofit(args: argparse.Namespace) -> int:
    from dynacomp.dmc.retrofit import RetrofitConfig, report_summary, retrofit

    config = config_from_args(RetrofitConfig, args)
    report = retrofit(config, args.out, command=shlex.join(["dynacomp", *sys.argv[1:]]))
    if report is not None:
        emit(report if args.json else report_summary(report) | {"out": str(args.out)}, args.json, format_mapping)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from dynacomp.dmc.retrofit import calibrate, report_summary

    config = config_from_args(CalibrateConfig, args)
    report = calibrate(config.model, args.out, config.target_cr, base=config.base, data=config.data,
                       tokens=config.tokens, context=config.context, eval_tokens=config.eval_tokens,
                       command=shlex.join(["dynacomp", *sys.argv[1:]]), device=config.device, hold=config.hold)
    summary = report_summary(report) | {"decision_threshold": report["decision_threshold"], "out": str(args.out)}
    emit(report if args.json else summary, args.json, format_mapping)
    return 0


def load_for_generation(model: str, config: DMCConfig, given: set[str]):
    """(model, tokenizer): a DMC checkpoint with the ``given`` fields of ``config`` overriding its
    own, or a plain model converted with ``config``."""
    from dynacomp.dmc import convert, is_dmc_checkpoint, load, zero_decision_channels
    from dynacomp.models import load_causal_lm

    if is_dmc_checkpoint(model):
        return load(model, **{name: getattr(config, name) for name in given})
    plain, tokenizer = load_causal_lm(model)
    zero_decision_channels(plain)  # untrained decision channels: every head appends unless forced
    return convert(plain, config), tokenizer


def run_generate(args: argparse.Namespace) -> int:
    import torch

    if not args.prompt.strip():
        raise UsageError('the prompt is empty: give some text to continue, e.g. --prompt "Once upon a time"')
    config = config_from_args(DMCConfig, args)
    given = {name for name in DMCConfig.__dataclass_fields__ if hasattr(args, name)}   # flags given explicitly
    model, tokenizer = load_for_generation(args.model, config, given)
    if tokenizer is None:
        raise Failure(f"{args.model} holds no tokenizer: save the checkpoint with its tokenizer")
    inputs = tokenizer(args.prompt, return_tensors="pt")
    cache = model.new_cache()
    with torch.no_grad():
        output = model.generate(**inputs, cache=cache, max_new_tokens=args.max_new_tokens, do_sample=False)
    result = {"prompt": args.prompt,
              "continuation": tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True),
              "cache": cache.stats().to_dict(per_head=args.json)}
    emit(result, args.json, format_mapping)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from dynacomp.dmc.retrofit import RetrofitConfig

    group = sub.add_parser("dmc", help="Dynamic Memory Compression: retrofit an LLM to merge its KV cache",
                           description="Dynamic Memory Compression (Nawrot, Łańcucki et al., ICML 2024).")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    retrofit = commands.add_parser("retrofit", help="retrofit a model with DMC (three resumable stages)",
                                   description=RETROFIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    retrofit.add_argument("--out", type=Path, required=True,
                          help="output folder; an existing one is resumed where it stopped")
    add_config_args(retrofit, RetrofitConfig)
    add_json_flag(retrofit)
    retrofit.set_defaults(func=run_retrofit)

    calibrate = commands.add_parser(
        "calibrate", help="tune a retrofitted checkpoint's decision threshold to realise a target ratio",
        description="Training aims the soft (Gumbel) ratio at the target; with hard decisions a model keeps a few "
                    "percent more or fewer slots. This bisects the threshold on the decision logit on the "
                    "validation split until the model realises --target-cr, saves OUT/model, and reports base and "
                    "DMC perplexity and the realised ratios on the test split (OUT/report.json, OUT/cr_heatmap.png). "
                    "A threshold realises another ratio on other text; --hold (DMS) saves each layer's share of "
                    "kept tokens instead, which the model then holds on any text.")
    calibrate.add_argument("--out", type=Path, required=True, help="output folder")
    add_config_args(calibrate, CalibrateConfig)
    add_json_flag(calibrate)
    calibrate.set_defaults(func=run_calibrate)

    generate = commands.add_parser("generate", help="generate with a DMC model and show the cache statistics",
                                   description=GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("--model", required=True, help="DMC checkpoint folder, or a plain model to convert")
    generate.add_argument("--prompt", required=True, help="the prompt text")
    generate.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (greedy)")
    add_config_args(generate, DMCConfig, config_file=False)
    add_json_flag(generate)
    generate.set_defaults(func=run_generate)

    register_eval(commands)

    bench = commands.add_parser("bench", help="decode throughput of DMC vs dense caches, side by side",
                                description=bench_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(bench, bench_module.BenchConfig)
    add_json_flag(bench)
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    config = config_from_args(bench_module.BenchConfig, args)
    result = bench_module.run(config, progress=lambda r: print(
        f"{r['method']:<12} ratio {r['cr']:.2f}: {r['tokens_per_s']:.1f} tokens/s", file=sys.stderr))
    columns = ("method", "cr", "tokens_per_s", "step_seconds", "attention_share", "kv_bytes", "peak_memory_bytes",
               "speedup_vs_hf_generate", "speedup_vs_hf_static", "speedup_vs_vanilla")
    emit(result, args.json, lambda r: "\n".join(
        "  ".join(f"{c}={row[c]:.4g}" if isinstance(row.get(c), float) else f"{c}={row.get(c)}" for c in columns)
        for row in r["rows"]))
    return 0
