"""The serving issue's anchor, offline and in one process: dynacomp's dense engine against
transformers' own continuous batching (`generate_batch`, paged cache, FIFO scheduler, requests
that no longer fit recomputed, as ours are) on one fixed-length greedy workload at the same KV
budget. Ours runs in both admission modes: reserving for the share of max_tokens finished requests
generated (the default), and SGLang's decaying reserve (`--no-reserve-by-output`), which admits
more and preempts when it guessed wrong. Engines alternate for ``--repeats`` rounds; the page
gives every round and the median.

    python benchmarks/serving_anchor.py --kv-budget 64MiB --num-prompts 24 --input-len 256 \
        --output-len 128 --out docs/results/serving_anchor.md
"""

from __future__ import annotations

import argparse
import datetime
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

from common import machine

from dynacomp.io import write_json, write_text
from dynacomp.serve.bench import LoadConfig, prompts_from_corpus
from dynacomp.serve.cli import ServeConfig, load_engine, parse_bytes
from dynacomp.serve.engine import Engine, SamplingParams


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kv-budget", default="48MiB")
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--page-size", type=int, default=16, help="slots per cache page, the same for every engine")
    parser.add_argument("--max-num-seqs", type=int, default=64)


def fixed_workload(args) -> list[list[int]]:
    """Prompts of exactly input_len tokens cut from the load benchmark's corpus, as it cuts them."""
    from transformers import AutoTokenizer

    from dynacomp.data.text import load_split
    from dynacomp.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
    ids = tokenizer(load_split(LoadConfig.corpus, "test"), add_special_tokens=False)["input_ids"]
    return prompts_from_corpus(ids, [(args.input_len, args.output_len)] * args.num_prompts, random.Random(0))


def transformers_run(args, prompts: list[list[int]]):
    """A function running transformers' continuous batching over ``prompts`` once."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from dynacomp.models import load_causal_lm

    model, _ = load_causal_lm(args.model)
    c = model.config
    token_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    blocks = parse_bytes(args.kv_budget) // (args.page_size * token_bytes)
    generation = GenerationConfig(max_new_tokens=args.output_len, do_sample=False, eos_token_id=None)
    batching = ContinuousBatchingConfig(num_blocks=blocks, page_size=args.page_size, max_batch_tokens=512,
                                        max_requests_per_batch=args.max_num_seqs, cpu_offload_space=0)

    def run() -> dict:
        out = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching,
                                   warmup=False)
        return {"output_tokens": sum(len(o.generated_tokens) for o in out.values()), "num_blocks": blocks}
    return run


def dynacomp_run(args, prompts: list[list[int]], reserve_by_output: bool):
    """A function running dynacomp's dense engine over ``prompts`` once (a fresh engine and pool each
    time, on a model loaded once, as transformers' is)."""
    loaded = load_engine(ServeConfig(model=args.model, dense=True, kv_budget=args.kv_budget, page_size=args.page_size,
                                     max_num_seqs=args.max_num_seqs, reserve_by_output=reserve_by_output))

    def run() -> dict:
        engine = Engine(loaded.model, loaded.tokenizer, loaded.config)
        done = engine.generate_batch(prompts, SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True))
        return {"output_tokens": sum(len(r.output) for r in done), "peak_running": engine.stats.peak_running,
                "preemptions": engine.stats.preemptions}
    return run


def transformers_anchor(args, prompts: list[list[int]], repeats: int = 1) -> dict:
    """Output tokens/s of each engine on ``prompts``, engines alternating for ``repeats`` rounds."""
    engines = {"transformers generate_batch": transformers_run(args, prompts),
               "dynacomp dense (reserve by output)": dynacomp_run(args, prompts, True),
               "dynacomp dense (decaying reserve)": dynacomp_run(args, prompts, False)}
    rounds = {name: [] for name in engines}
    for _ in range(repeats):
        for name, run in engines.items():
            start = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - start
            rounds[name].append({**result, "seconds": seconds, "output_throughput": result["output_tokens"] / seconds})
            print(f"{name}: {rounds[name][-1]}", file=sys.stderr)
    return {name: {"rounds": r, "median_output_throughput": statistics.median(x["output_throughput"] for x in r)}
            for name, r in rounds.items()}


def anchor_lines(args, anchor: dict) -> list[str]:
    """The anchor's table: every round's output tokens/s, the median, and the ratio to transformers."""
    reference = anchor["transformers generate_batch"]["median_output_throughput"]
    blocks = anchor["transformers generate_batch"]["rounds"][0]["num_blocks"]
    lines = [f"Offline, dense, {args.num_prompts} prompts of {args.input_len} tokens, {args.output_len} greedy tokens "
             f"each, the same KV budget ({args.kv_budget}: {blocks} blocks of {args.page_size} for transformers); "
             "engines alternate, one row per engine:", "",
             "| engine | output tok/s per round | median | x transformers | peak running | preemptions |",
             "|---|---|---|---|---|---|"]
    for name, result in anchor.items():
        rounds, median = result["rounds"], result["median_output_throughput"]
        peak = "/".join(str(r["peak_running"]) for r in rounds) if "peak_running" in rounds[0] else "-"
        preempted = "/".join(str(r["preemptions"]) for r in rounds) if "preemptions" in rounds[0] else "-"
        speeds = ", ".join(f"{r['output_throughput']:.1f}" for r in rounds)
        lines.append(f"| {name} | {speeds} | {median:.1f} | "
                     f"{median / reference:.2f} | {peak} | {preempted} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/results/serving_anchor.md"))
    args = parser.parse_args()
    anchor = transformers_anchor(args, fixed_workload(args), args.repeats)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = {"command": command, "machine": machine("cpu"), "date": datetime.date.today().isoformat()}
    write_json(args.out.with_suffix(".json"), {**header, "anchor": anchor})
    write_text(args.out, "\n".join(["# dynacomp's dense engine against transformers' continuous batching", "",
                                    f"- Command: `{command}`", f"- Machine: {header['machine']}",
                                    f"- Date: {header['date']}", "", *anchor_lines(args, anchor), ""]))


if __name__ == "__main__":
    main()
