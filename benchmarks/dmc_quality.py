"""DMC against its peers at equal cache memory: perplexity against memory ratio, passkey retrieval.

    python benchmarks/dmc_quality.py --out docs/results/dmc_quality.md
    python benchmarks/dmc_quality.py --dmc-checkpoints runs/dmc-cr4 --out docs/results/dmc_quality.md
    python benchmarks/dmc_quality.py --smoke          # tiny sizes, written under /tmp: proves it runs

Perplexity (``dynacomp.dmc.evaluation.harness.perplexity_online``, every token decoded through the
compressed cache) for vanilla, DMC with a fixed pattern (``dmc_forced``), StreamingLLM, H2O and
TOVA at every ``--crs`` ratio and at each trained DMC checkpoint's realised ratio (equal memory),
int8 and int4 once (their ratio is set by the bit width), and each trained DMC checkpoint; passkey
accuracy per context length for every method at ``--passkey-cr``. Writes a markdown file, a JSON
file and two plots beside ``--out``, each naming the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import torch
from common import machine

from dynacomp.dmc import policies
from dynacomp.dmc.evaluation.cli import MethodConfig, load_for_eval
from dynacomp.dmc.evaluation.harness import EvalOptions, passkey, perplexity_online, plot_passkey, plot_perplexity
from dynacomp.dmc.policies import POLICIES
from dynacomp.io import write_json, write_text

# Peers set by the requested ratio (run at every --crs), and peers whose ratio is fixed by their format.
EVICTION = tuple(name for name, policy in POLICIES.items() if policy.uses_cr)
QUANTISED = policies.names_of("quantised")
SMOKE = dict(crs=[4], context=32, max_tokens=64, batch_size=2, passkey_lengths=[96], trials=1,
             chunk=1, out=Path("/tmp/dmc_quality_smoke/dmc_quality.md"))


def perplexity_table(rows: list[dict]) -> str:
    lines = ["| method | requested CR | memory ratio | perplexity | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        requested = f"{r['cr']:g}" if POLICIES[r["method"]].uses_cr else "-"
        name = POLICIES[r["method"]].label + (f" `{r['model']}`" if r["method"] == "dmc" else "")
        lines.append(f"| {name} | {requested} | {r['ratio']:.2f} | {r['perplexity']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def passkey_table(results: list[dict]) -> str:
    lengths = [row["context"] for row in results[0]["results"]]
    lines = ["| method | memory ratio | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for r in results:
        cells = " | ".join(f"{row['correct']}/{row['trials']}" for row in r["results"])
        lines.append(f"| {POLICIES[r['method']].label} | {r['ratio']:.2f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the base model for every method but trained DMC")
    parser.add_argument("--dmc-checkpoints", nargs="*", default=[], help="retrofitted DMC checkpoints to add")
    parser.add_argument("--crs", nargs="*", type=float, default=[2, 3, 4, 8],
                        help="ratios for the peers, besides each --dmc-checkpoints realised one")
    parser.add_argument("--peers", nargs="*", default=[*QUANTISED, *EVICTION], choices=[*QUANTISED, *EVICTION],
                        help="methods compared besides vanilla and the trained checkpoints")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N test tokens")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1, help="tokens per forward for online methods (1: exact)")
    parser.add_argument("--passkey-lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--passkey-cr", type=float, default=4)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/dmc_quality.md"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, written under /tmp (not results)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    base = MethodConfig(model=args.model, device=args.device, dtype=args.dtype)
    model, tokenizer = load_for_eval(base)
    from dynacomp.data.text import load_split
    ids = torch.tensor(tokenizer(load_split("english", "test"), add_special_tokens=False)["input_ids"])
    options = EvalOptions(batch_size=args.batch_size, max_tokens=args.max_tokens, chunk=args.chunk)
    pk_options = EvalOptions(chunk=args.chunk)

    def ppl(m, method: str, cr: float, name: str) -> dict:
        return {**perplexity_online(m, ids, method, cr, args.context, options), "model": name}

    # Trained checkpoints first: the peers then also run at each one's realised ratio (equal memory).
    trained, trained_keys = [], []
    for checkpoint in args.dmc_checkpoints:
        dmc, dmc_tokenizer = load_for_eval(MethodConfig(model=checkpoint, method="dmc", device=args.device,
                                                        dtype=args.dtype))
        if dmc_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SystemExit(f"{checkpoint} has another tokenizer than {args.model}: perplexities would not compare")
        trained.append(ppl(dmc, "dmc", 1, checkpoint))
        trained_keys.append({**passkey(dmc, tokenizer, "dmc", 1, args.passkey_lengths, args.trials, 0, pk_options),
                             "model": checkpoint})
    crs = sorted({*args.crs, *(round(r["ratio"], 2) for r in trained)})
    quantised = [m for m in QUANTISED if m in args.peers]
    eviction = [m for m in EVICTION if m in args.peers]
    rows = [ppl(model, method, 1, args.model) for method in ("vanilla", *quantised)]
    # dmc_forced at CR 1 shows what stripping the decision channel alone costs a model never retrofitted
    rows += [ppl(model, method, cr, args.model) for method in eviction
             for cr in ([1, *crs] if method == "dmc_forced" else crs)]
    rows += trained
    keys = [passkey(model, tokenizer, method, args.passkey_cr, args.passkey_lengths, args.trials, 0, pk_options)
            for method in ("vanilla", *quantised, *eviction)] + trained_keys

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = {"command": command, "machine": machine(args.device), "date": datetime.date.today().isoformat(),
              "model": args.model, "context": args.context, "scored_tokens": rows[0]["tokens"], "dtype": args.dtype}
    stem = args.out.with_suffix("")
    for path, plot, results, title in (
            (stem.with_name(stem.name + "_perplexity.png"), plot_perplexity, rows,
             f"{args.model}, context {args.context}"),
            (stem.with_name(stem.name + "_passkey.png"), plot_passkey, keys,
             f"{args.model}, passkey, CR {args.passkey_cr:g}")):
        plot(results, path, title)   # written atomically
    write_json(args.out.with_suffix(".json"), {**header, "perplexity": rows, "passkey": keys})
    write_text(args.out, f"""# DMC and its peers at equal cache memory

- Command: `{command}`
- Machine: {header['machine']}
- Date: {header['date']}

Model `{args.model}` ({args.dtype}); every token is decoded through the compressed cache
(`dynacomp dmc eval`), online: each window is read {args.chunk} token(s) per forward after a 1-token
prefix; vanilla and DMC, whose prefill is exact, in blocks. Memory ratio: a dense cache's bytes
over the most the method's cache held after any forward of a window (what has to be provisioned):
tokens per slot for eviction; for DMC its slots plus the open runs it keeps for merging (window - 1
entries per head); for int8 / int4, 16-bit dense bytes over stored bytes with scales, zero points
and the full-precision residual window counted in 16 bits, just before the window is packed.
`dmc_forced` is DMC with a fixed merge pattern instead of learned decisions, on the same weights: its
row at CR 1 (no merging) shows the cost of giving up the repurposed decision channel alone.

kvpress (PyPI, NVIDIA's press library) is not in the table: its releases 0.5.3 to 0.5.5 require
`transformers<5.3` and dynacomp pins 5.24.0; 0.5.2 declares no upper bound, but its forward hook
reads the attention module's `past_key_values` keyword argument, which transformers 5.24 passes as
`cache`. Its StreamingLLM and TOVA presses are the policies of the rows above.

## Perplexity, English test split, windows of {args.context} tokens ({header['scored_tokens']} tokens scored)

{perplexity_table(rows)}

![perplexity against memory ratio]({stem.name}_perplexity.png)

## Passkey retrieval (correct / trials), CR {args.passkey_cr:g}

{passkey_table(keys)}

![passkey accuracy]({stem.name}_passkey.png)
""")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
