"""DMC's page attention kernel against dense SDPA over the same keys: one layer of SmolLM2-135M at
batch 16 (48 KV-head rows, 3 query heads each, head dim 64), one decoding query per head.

    python benchmarks/dmc_page_kernel.py --slots 4096 --page-sizes 64 128 256 --threads 2

Times (medians of --repeats calls, ms) ``page_attention`` of ``dynacomp.dmc.cache`` over
slots / page_size pages, and ``scaled_dot_product_attention`` over the dense (rows, slots) keys,
side by side in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dynacomp.dmc.cache import page_attention


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--slots", type=int, default=4096)
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = args.dim ** -0.5

    queries = torch.randn(args.rows, args.queries, args.dim)
    keys, values = torch.randn(2, args.rows, args.slots, args.dim)
    dense_q = queries[:, None]                                              # (rows, 1, M, D)
    dense = median_ms(lambda: F.scaled_dot_product_attention(dense_q, keys[:, None], values[:, None], scale=scale),
                      args.repeats)
    print(f"dense SDPA: {dense:.2f} ms")
    for page in args.page_sizes:
        pages = args.rows * args.slots // page
        k, v = keys.reshape(pages, page, args.dim), values.reshape(pages, page, args.dim)
        q = queries.repeat_interleave(args.slots // page, 0)
        valid = torch.ones(pages, page, dtype=torch.bool)
        print(f"pages of {page}: {median_ms(lambda: page_attention(q, k, v, valid, scale), args.repeats):.2f} ms")


if __name__ == "__main__":
    main()
