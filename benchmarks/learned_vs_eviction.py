"""The flagship claim, measured: a retrofitted learned policy (DMS or DMC) against training-free
eviction (StreamingLLM, H2O, TOVA) at equal KV memory, on held-out text of domains the retrofit
never trained on, with paired bootstrap intervals.

For each target memory ratio the checkpoint's decision threshold is calibrated at the evaluation
context on a validation split: by default the retrofit's training mixture (the evaluated domain
unseen, but a threshold realises less on other text), or with ``--calibrate-on CORPUS`` the
evaluated corpus's own validation split (its test split stays unseen), so that the ratio is the one
asked for. ``--held`` makes a DMS checkpoint hold each layer's share of kept tokens found there by
ranking its eviction logits (``calibrate_hold``: the ratio carries over, quality does not); then, per
corpus, the learned policy is scored first and every peer runs at the memory ratio the learned
policy realised there (the peers' per-slot statistics counted in their memory, so equal ratios mean
the peers hold slightly more bytes). Beside them: the unmodified model, and the checkpoint's own
weights with compression off (what the retrofit's fine-tuning alone costs). Every cell scores the
same windows, so each learned-vs-peer ratio gets a paired bootstrap 95 % interval over windows.
With ``--passkey-trials N``, passkey retrieval at the evaluation context for each ratio: the learned
policy at its threshold, every peer at the memory ratio the learned policy realised on the passkey
prompts (the same keys and depths for all), accuracy with Wilson 95 % intervals.

    python benchmarks/learned_vs_eviction.py --checkpoint runs/dms4_probe/model --eviction-window 256 \\
        --ratios 2 4 --context 2048 --corpora manpages --calibrate-on manpages --max-tokens 32768 \\
        --calibrate-tokens 8192 --chunk 64 --passkey-trials 50 --out docs/results/dmc_quality.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
from common import machine

from dynacomp.data.text import load_split
from dynacomp.dmc import convert, load, load_base
from dynacomp.dmc.cache.control import keep_share_for_ratio
from dynacomp.dmc.evaluation.harness import EvalOptions, passkey, perplexity_online
from dynacomp.dmc.policies import POLICIES
from dynacomp.dmc.retrofit.recipe import calibrate_hold, calibrate_threshold, load_text
from dynacomp.io import figure, write_json, write_text
from dynacomp.metrics.intervals import paired_perplexity_ratio, wilson
from dynacomp.models import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a retrofitted DMS or DMC checkpoint")
    parser.add_argument("--base", default="smollm2-135m", help="the unmodified model the peers run on")
    parser.add_argument("--ratios", nargs="+", type=float, default=[2, 4])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--corpora", nargs="+", default=["manpages"], help="held-out corpora scored (test splits)")
    parser.add_argument("--calibrate-on", default="english+austen+bible",
                        help="where thresholds are calibrated (validation split): the retrofit's training mixture, "
                             "or the evaluated corpus (its test split stays unseen)")
    parser.add_argument("--calibrate-tokens", type=int, default=8192)
    parser.add_argument("--eviction-window", type=int, default=None,
                        help="DMS: evaluate with this eviction window instead of the one it trained with")
    parser.add_argument("--sinks", type=int, default=0, help="first tokens the learned policy never compresses")
    parser.add_argument("--held", action="store_true", help="DMS: hold the calibrated per-layer shares of kept "
                                                             "tokens on the evaluated text (calibrate_hold)")
    parser.add_argument("--keep-share", action="store_true",
                        help="DMS: calibrate nothing; hold each ratio with keep_share = (context / ratio - w) / "
                             "(context - w) for eviction window w, the sequence's own logits setting its threshold")
    parser.add_argument("--max-tokens", type=int, default=34816, help="test tokens per corpus (17 windows of 2048)")
    parser.add_argument("--peers", nargs="*", default=["streaming_llm", "h2o", "tova"],
                        help="training-free policies run at the learned policy's ratio (none: the learned policy alone)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=16,
                        help="tokens per forward for the peers (1: exact; more lets a chunk see itself uncompressed, "
                             "which favours the peers)")
    parser.add_argument("--passkey-trials", type=int, default=0,
                        help="passkey prompts per ratio at the evaluation context (0: none)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/dmc_quality.md"))
    args = parser.parse_args()
    torch.manual_seed(0)

    learned, tokenizer = load(args.checkpoint, sinks=args.sinks,
                              **({"eviction_window": args.eviction_window} if args.eviction_window else {}))
    policy = learned.dmc_config.policy
    base, _ = load_causal_lm(args.base)
    plain, _, _ = load_base(args.checkpoint)            # the checkpoint's weights, compression off
    uncompressed = convert(plain, replace(learned.dmc_config, decision_threshold=math.inf, hold_keep=None))
    options = EvalOptions(batch_size=args.batch_size, max_tokens=args.max_tokens, chunk=args.chunk)

    def ids_of(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])

    calibration = ids_of(load_text(args.calibrate_on, "validation"))[:args.calibrate_tokens]
    texts = {corpus: ids_of(load_split(corpus, "test")) for corpus in args.corpora}
    rows: list[dict] = []

    def score(model, method: str, cr: float, corpus: str, name: str, target: float | None = None) -> dict:
        result = perplexity_online(model, texts[corpus], method, cr, args.context, options)
        row = {"corpus": corpus, "name": name, "method": method, "target": target, **result}
        rows.append(row)
        print(f"{corpus} {name}: ppl {row['perplexity']:.3f} at memory ratio {row['ratio']:.2f}", file=sys.stderr)
        return row

    for corpus in args.corpora:
        score(base, "vanilla", 1, corpus, "unmodified model")
        score(uncompressed, policy, 1, corpus, f"{policy.upper()} weights, compression off")
    thresholds, keys, calibrate = {}, [], calibrate_hold if args.held else calibrate_threshold
    label = f"{policy.upper()} (trained{', held shares' if args.held else ', keep_share' if args.keep_share else ''})"
    for ratio in args.ratios:
        model = copy.deepcopy(learned)
        if args.keep_share:
            window = learned.dmc_config.eviction_window
            keep = keep_share_for_ratio(ratio, args.context, window)
            convert(model, replace(learned.dmc_config, keep_share=keep))
            thresholds[ratio] = (keep, None)
        else:
            thresholds[ratio] = calibrate(model, calibration, ratio, args.context, args.batch_size, steps=12,
                                          bound=64.0)
        for corpus in args.corpora:
            mine = score(model, policy, 1, corpus, label, ratio)
            for peer in args.peers:
                other = score(base, peer, mine["ratio"], corpus, POLICIES[peer].label, ratio)
                other["vs_learned"] = paired_perplexity_ratio(mine["window_nll"], other["window_nll"],
                                                              mine["window_tokens"])
        if args.passkey_trials:
            keys += passkey_at_equal_memory(model, base, tokenizer, policy, label, ratio, args)

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = {"command": command, "machine": machine("cpu"), "date": datetime.date.today().isoformat(),
              "checkpoint": args.checkpoint, "context": args.context, "chunk": args.chunk,
              "eviction_window": learned.dmc_config.eviction_window if policy == "dms" else None,
              "sinks": args.sinks,
              "thresholds": {str(r): t for r, t in thresholds.items()}}
    write_json(args.out.with_suffix(".json"), {**header, "rows": rows, "passkey": keys})
    plot(rows, args.out.with_name(args.out.stem + "_perplexity.png"), args)
    write_text(args.out, page(rows, header, args) + passkey_page(keys, args))


def passkey_at_equal_memory(learned, base, tokenizer, policy: str, label: str, target: float, args) -> list[dict]:
    """Passkey rows at one target ratio: the learned policy first, then each peer at the ratio it realised."""
    options = EvalOptions(chunk=args.chunk)
    mine = passkey(learned, tokenizer, policy, 1, [args.context], args.passkey_trials, 0, options)
    rows = [{"name": label, "target": target, **mine}]
    for peer in args.peers:
        rows.append({"name": POLICIES[peer].label, "target": target,
                     **passkey(base, tokenizer, peer, mine["ratio"], [args.context], args.passkey_trials, 0, options)})
    for row in rows:
        result = row["results"][0]
        row["interval"] = wilson(result["correct"], result["trials"])
        print(f"passkey {row['name']} at {row['ratio']:.2f}: {result['correct']}/{result['trials']}", file=sys.stderr)
    return rows


def passkey_page(keys: list[dict], args) -> str:
    if not keys:
        return ""
    lines = ["", f"Passkey retrieval at context {args.context} ({args.passkey_trials} prompts per row, the same keys "
             "and depths in every row; a 5-digit key in filler text, greedy answer); peers at the memory ratio "
             "the learned policy realised on these prompts:", "",
             "| target | method | memory ratio | correct | accuracy (95 % Wilson) |", "|---|---|---|---|---|"]
    for row in keys:
        result, (low, high) = row["results"][0], row["interval"]
        lines.append(f"| {row['target']} | {row['name']} | {row['ratio']:.2f} | {result['correct']}/{result['trials']} "
                     f"| {result['accuracy']:.2f} [{low:.2f}, {high:.2f}] |")
    return "\n".join(lines + [""])


def plot(rows: list[dict], path: Path, args) -> None:
    corpora = args.corpora
    with figure(path, ncols=len(corpora), figsize=(5.2 * len(corpora), 4.2)) as (_, axes):
        for ax, corpus in zip(axes if len(corpora) > 1 else [axes], corpora):
            mine = [r for r in rows if r["corpus"] == corpus]
            for name in dict.fromkeys(r["name"] for r in mine if r["target"] is not None):
                points = sorted((r["ratio"], r["perplexity"]) for r in mine if r["name"] == name)
                ax.plot(*zip(*points), marker="o", label=name)
            for r in mine:
                if r["target"] is None:
                    ax.axhline(r["perplexity"], linestyle="--", linewidth=1, color="grey" if r["method"] == "vanilla"
                               else "black", label=r["name"])
            ax.set(xlabel="memory ratio (dense cache / this cache)", ylabel="perplexity",
                   title=f"{corpus} (held out), context {args.context}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def _setting(value) -> str:
    """A calibrated threshold, or the range of held per-layer shares."""
    return f"{value:.3g}" if isinstance(value, float) else f"kept shares {min(value):.2f}-{max(value):.2f}"


def _calibration(header: dict, args) -> str:
    """How the learned policy was set for each ratio."""
    settings = header["thresholds"].items()
    if args.keep_share:
        return ("Nothing calibrated: each sequence holds keep_share = (context / ratio - w) / (context - w) of its "
                "tokens, its threshold set from its own eviction logits (the checkpoint's threshold for its first "
                "two blocks): " + ", ".join(f"ratio {r} -> keep {t[0]:.3f}" for r, t in settings))
    return ((f"Per-layer shares of kept tokens calibrated on the validation split of {args.calibrate_on} and held by "
             "ranking (calibrate_hold); realised there: " if args.held else
             f"Thresholds calibrated on the validation split of {args.calibrate_on}: ")
            + ", ".join(f"ratio {r} -> {_setting(t[0])} (realised {t[1]:.2f})" for r, t in settings))


def page(rows: list[dict], header: dict, args) -> str:
    lines = [f"# {header['checkpoint']} against training-free eviction at equal memory", "",
             f"- Command: `{header['command']}`", f"- Machine: {header['machine']}", f"- Date: {header['date']}", "",
             f"Context {args.context}; {rows[0]['tokens']} scored tokens per cell ({rows[0]['windows']} windows); "
             + (f"DMS eviction window {header['eviction_window']}; " if header["eviction_window"] else "")
             + f"{header['sinks']} sink tokens never compressed; " +
             f"peers read {args.chunk} tokens per forward after the first (more favours them). "
             + _calibration(header, args) + ".",
             "", "| corpus | target | method | memory ratio | perplexity | learned / this (95 % paired CI) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        versus = r.get("vs_learned")
        cell = f"{versus['ratio']:.4f} [{versus['low']:.4f}, {versus['high']:.4f}]" if versus else ""
        lines.append(f"| {r['corpus']} | {r['target'] or '-'} | {r['name']} | {r['ratio']:.2f} | "
                     f"{r['perplexity']:.3f} | {cell} |")
    lines += ["", f"![perplexity against memory ratio]({args.out.stem}_perplexity.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
