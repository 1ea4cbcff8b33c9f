"""The linear layers of a decoding step, three ways: ``F.linear(x, W)`` (what ``nn.Linear`` runs),
``(W @ x^T)^T`` (the operands swapped), and oneDNN's product with a weight prepacked for
``PACKED_FOR_ROWS`` rows (``dynacomp.nn.linear.PackedLinear``, which converted models use), over the
weight shapes of SmolLM2-135M (per layer q, k, v, o, gate, up, down; then the 49,152-word output
layer), each weight its own tensor so that every product reads it from memory as a decoding step
does. Medians of interleaved rounds, per row count (sequences in a decoding batch, or tokens of a
prefill chunk).

    python benchmarks/linear_layout.py --layers 30 --rows 1 2 3 4 8 16 64 512 --out docs/results/linear_layout.md
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from common import machine

from dynacomp.io import write_text
from dynacomp.nn.linear import PACKED_FOR_ROWS, packed_product, prepack

LAYER_SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
OUTPUT_SHAPE = (49152, 576)


PRODUCTS = {
    "F.linear": lambda x, w, packed: torch.nn.functional.linear(x, w),
    "(W @ x^T)^T": lambda x, w, packed: (w @ x.T).T.contiguous(),
    "prepacked": lambda x, w, packed: packed_product(x, packed),
}


def step_time(weights: list[torch.Tensor], packed: list[torch.Tensor], rows: int, product: str) -> float:
    """Seconds to multiply every weight by ``rows`` input rows once."""
    inputs = {i: torch.randn(rows, i, dtype=weights[0].dtype) for i in (576, 1536)}
    multiply = PRODUCTS[product]
    start = time.perf_counter()
    for w, p in zip(weights, packed):
        multiply(inputs[w.shape[1]], w, p)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 3, 4, 8, 16, 64, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/results/linear_layout.md"))
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Linear layers of a decoding step: F.linear, the transposed product, oneDNN prepacked", "",
             f"- Command: `{command}`", f"- Machine: {machine('cpu')}", f"- Date: {datetime.date.today().isoformat()}",
             "", f"{args.layers} layers of SmolLM2-135M's shapes plus its output layer, every weight read from memory; "
             f"medians of {args.rounds} interleaved rounds, milliseconds per step; the weights prepacked for "
             f"{PACKED_FOR_ROWS} rows whatever the rows; speed-up of prepacked over F.linear:", "",
             "| dtype | rows | weight MB | " + " | ".join(PRODUCTS) + " | speed-up |", "|---|---|---|---|---|---|---|"]
    with torch.no_grad():
        for name in args.dtypes:
            dtype = getattr(torch, name)
            weights = [torch.randn(shape, dtype=dtype) for _ in range(args.layers) for shape in LAYER_SHAPES]
            weights.append(torch.randn(OUTPUT_SHAPE, dtype=dtype))
            packed = [prepack(w) for w in weights]
            megabytes = sum(w.numel() * w.element_size() for w in weights) / 1e6
            for rows in args.rows:
                times = {product: [] for product in PRODUCTS}
                step_time(weights, packed, rows, "F.linear")                # warm-up
                for _ in range(args.rounds):
                    for product in PRODUCTS:
                        times[product].append(step_time(weights, packed, rows, product))
                ms = {product: 1000 * statistics.median(t) for product, t in times.items()}
                lines.append(f"| {name} | {rows} | {megabytes:.0f} | " + " | ".join(f"{t:.1f}" for t in ms.values())
                             + f" | {ms['F.linear'] / ms['prepacked']:.2f} |")
                print(lines[-1], file=sys.stderr)
    write_text(args.out, "\n".join(lines + [""]))


if __name__ == "__main__":
    main()
