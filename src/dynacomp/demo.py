"""``dynacomp demo``: learned KV compression working, on the embedded defaults, offline, in minutes.

Loads the embedded SmolLM2-135M and the retrofitted adapter dynacomp ships (a small delta over it;
no training), then side by side for the original model and the compressed one: greedy
continuations of held-out passages of 1,024 tokens with the KV bytes each cache holds, the
realised compression ratio and tokens/s, and the perplexity of held-out passages of 2,048 tokens:
one of a domain the retrofit never saw, one of a domain it trained on. Writes OUT/report.md and OUT/kv_ratio_heatmap.png
(tokens per KV slot of every layer and KV head on the last passage). ``--retrofit`` instead runs a
few-minute retrofit from scratch (it reaches the ratio, not the quality: docs/results/dmc_retrofit.md
has real runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dynacomp.console import add_json_flag, emit, format_mapping

# The DMS retrofit whose eviction decisions come from an added probe (the only part trained): with
# compression off it is the base model; its threshold is set for memory ratio 4 on manpages' validation split.
SHIPPED = "smollm2-135m-dms4-probe"
NEW_TOKENS = 120
PASSAGE_TOKENS = 2048
# Continuations read prompts of held-out text far longer than the 256 tokens DMS keeps exact, so
# that the cache has something to evict: two of each passage's corpus, after the scored passage.
PROMPT_TOKENS = 1024
PROMPTS_PER_CORPUS = 2
# Held-out test splits: one of a domain the adapter was retrofitted on (other chapters of the same
# novels), one of a domain it never saw.
PASSAGES = {"austen": "held out, trained domain",
            "manpages": "held out, domain never trained on (its validation split set the threshold)"}


def side_by_side(model, tokenizer, prompts: torch.Tensor, new_cache) -> dict:
    """Greedy continuations of ``prompts`` (B, PROMPT_TOKENS) in one batch, with the cache's stats and speed."""
    cache = new_cache()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), cache=cache,
                             max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    seconds = time.perf_counter() - started
    stats = cache.stats()
    texts = tokenizer.batch_decode(out[:, prompts.shape[1]:], skip_special_tokens=True)
    return {"texts": texts, "kv_bytes": stats.bytes, "compression_ratio": stats.compression_ratio,
            "memory_ratio": stats.memory_ratio, "tokens_per_s": prompts.shape[0] * NEW_TOKENS / seconds}


def passage_perplexity(model, ids: torch.Tensor, new_cache) -> tuple[float, object]:
    """Perplexity of the passage read through a fresh cache (exact prefill), and the cache."""
    from dynacomp.metrics.perplexity import window_nll

    cache = new_cache()
    with torch.no_grad():
        nll = window_nll(model, ids[None], cache, [(0, ids.numel())])
    return float(nll.mean().exp()), cache


def run(args: argparse.Namespace) -> int:
    if args.retrofit:
        return run_retrofit(args)
    from dynacomp.data.text import load_split
    from dynacomp.dmc import load
    from dynacomp.dmc.policies import DenseCache
    from dynacomp.dmc.retrofit import plot_cr_heatmap
    from dynacomp.io import cache_dir, write_text
    from dynacomp.models import DEFAULT_MODEL, load_causal_lm

    out = args.out or cache_dir("demo")
    started = time.perf_counter()
    base, tokenizer = load_causal_lm(DEFAULT_MODEL)
    dms, _ = load(SHIPPED)
    tests = {corpus: tokenizer(load_split(corpus, "test"), add_special_tokens=False)["input_ids"] for corpus in PASSAGES}
    prompts = torch.tensor([tests[corpus][start:start + PROMPT_TOKENS] for corpus in PASSAGES
                            for start in range(PASSAGE_TOKENS, PASSAGE_TOKENS + PROMPTS_PER_CORPUS * PROMPT_TOKENS,
                                               PROMPT_TOKENS)])
    dense = {"original": side_by_side(base, tokenizer, prompts, lambda: DenseCache(config=base.config))}
    compressed = side_by_side(dms, tokenizer, prompts, dms.new_cache)
    passages = {}
    for corpus, label in PASSAGES.items():
        ids = torch.tensor(tests[corpus][:PASSAGE_TOKENS])
        base_ppl, _ = passage_perplexity(base, ids, lambda: DenseCache(config=base.config))
        dms_ppl, cache = passage_perplexity(dms, ids, dms.new_cache)
        passages[corpus] = {"text": f"{label}: {corpus} test split, first {ids.numel()} tokens", "original": base_ppl,
                            "compressed": dms_ppl, "memory_ratio": cache.stats().memory_ratio}
    heatmap = out / "kv_ratio_heatmap.png"
    plot_cr_heatmap(cache.stats().per_layer_head, heatmap,
                    f"{SHIPPED}: tokens per KV slot on {PASSAGE_TOKENS} tokens of {corpus}")
    result = {
        "model": f"smollm2-135m and {SHIPPED}",
        "generation": [{"prompt_end": "..." + tokenizer.decode(p)[-160:], "original": a, "compressed": b}
                       for p, a, b in zip(prompts, dense["original"]["texts"], compressed["texts"])],
        "kv_bytes": {"original": dense["original"]["kv_bytes"], "compressed": compressed["kv_bytes"]},
        "memory_ratio": compressed["memory_ratio"],
        "tokens_per_s": {"original": dense["original"]["tokens_per_s"], "compressed": compressed["tokens_per_s"]},
        "held_out_perplexity": passages,
        "report": str(out / "report.md"), "seconds": time.perf_counter() - started,
    }
    write_text(out / "report.md", report_page(result, heatmap))
    emit(result, args.json, format_mapping)
    return 0


def report_page(result: dict, heatmap: Path) -> str:
    lines = ["# dynacomp demo", "", f"Models: {result['model']}.", "",
             "| | original | compressed |", "|---|---|---|",
             f"| KV bytes after {PROMPT_TOKENS} prompt + {NEW_TOKENS} new tokens x {len(result['generation'])} prompts | "
             f"{result['kv_bytes']['original']:,} | "
             f"{result['kv_bytes']['compressed']:,} (memory ratio {result['memory_ratio']:.2f}) |",
             f"| tokens/s | {result['tokens_per_s']['original']:.1f} | {result['tokens_per_s']['compressed']:.1f} |",
             *(f"| perplexity, {p['text']} | {p['original']:.2f} | {p['compressed']:.2f} "
               f"(memory ratio {p['memory_ratio']:.2f}) |" for p in result["held_out_perplexity"].values()), ""]
    for g in result["generation"]:
        lines += [f"**{g['prompt_end']}**", "", f"- original: {g['original']!r}", f"- compressed: {g['compressed']!r}", ""]
    lines += [f"![tokens per KV slot]({heatmap.name})", ""]
    return "\n".join(lines)


def run_retrofit(args: argparse.Namespace) -> int:
    from dynacomp.dmc.retrofit import demo, report_summary
    from dynacomp.io import cache_dir

    out = args.out or cache_dir("demo", "dmc_retrofit")
    report = demo(out)
    emit(report_summary(report) | {"out": str(out), "heat_map": str(out / "cr_heatmap.png"),
                                   "note": "a few minutes of training reach the ratio, not the quality; "
                                           "docs/results/dmc_retrofit.md has real runs"}, args.json, format_mapping)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="learned KV compression working on the embedded defaults (minutes)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: $DYNACOMP_CACHE/demo)")
    parser.add_argument("--retrofit", action="store_true", help="run a few-minute retrofit from scratch instead")
    add_json_flag(parser)
    parser.set_defaults(func=run)
