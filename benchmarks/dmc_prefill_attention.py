"""DMC's masked prefill attention on CPU: the fused flash-kernel blocks against the eager fp32
blocks (the path with gradients), on one layer of SmolLM2-135M's shape (3 KV heads, 3 query heads
each, head dim 64), side by side in one process, interleaved.

    python benchmarks/dmc_prefill_attention.py --batch 4 --length 1024 --threads 1

Prints the medians (ms) of ``--repeats`` calls of each over the whole sequence in blocks of
``--chunk`` queries, their ratio, and the largest output difference, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dynacomp.dmc.modeling.attention import _block_attention, _block_attention_fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--group", type=int, default=3, help="query heads per KV head")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256, help="queries per block (DMCConfig.query_chunk)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, h, g, n, d = args.batch, args.kv_heads, args.group, args.length, args.dim
    q, k, v = torch.randn(b, h, g, n, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    key_bias = torch.log(torch.rand(b, h, n).clamp(min=1e-3))     # log(1 - alpha) of soft merges

    def prefill(block):
        with torch.no_grad():
            return [block(q[..., s:s + args.chunk, :], k, v, key_bias, s, d ** -0.5) for s in range(0, n, args.chunk)]

    def ms(block) -> float:
        start = time.perf_counter()
        prefill(block)
        return (time.perf_counter() - start) * 1000

    difference = max((a[0] - f[0]).abs().max().item()      # also the warm-up of both
                     for a, f in zip(prefill(_block_attention), prefill(_block_attention_fused)))
    eager, fused = [], []
    for _ in range(args.repeats):   # interleaved, so load on a shared machine hits both alike
        eager.append(ms(_block_attention))
        fused.append(ms(_block_attention_fused))
    eager_ms, fused_ms = statistics.median(eager), statistics.median(fused)
    print(json.dumps({**vars(args), "eager_ms": round(eager_ms, 2), "fused_ms": round(fused_ms, 2),
                      "speedup": round(eager_ms / fused_ms, 2), "max_abs_difference": difference}))


if __name__ == "__main__":
    main()
