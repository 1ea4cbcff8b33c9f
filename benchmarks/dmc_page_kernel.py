"""DMC's decode attention over a paged cache against dense SDPA over the same keys: one layer of
SmolLM2-135M at batch 16 (48 KV-head rows, 3 query heads each, head dim 64), one query per head.

    python benchmarks/dmc_page_kernel.py --slots 4096 --page-sizes 64 128 256 --threads 2
    python benchmarks/dmc_page_kernel.py --slots 1024 4096 --page-sizes 128 --dtypes float32 bfloat16

A ``DMCLayer`` is filled with ``--slots`` slots per row, its pages in shuffled pool order (as
after decoding, when rows allocate pages in turn). Times, medians of ``--repeats`` interleaved
rounds (ms): ``scaled_dot_product_attention`` over the dense (rows, slots) keys, the layer's
PyTorch path (``attend_split_k``: per-page flash kernel, then the combination) and its native
kernel (``attend``), side by side in one process, with the largest difference of their outputs
and the rate at which each reads the keys and values it attends over (GB/s; SDPA's in float32).
With ``--dtypes``, the pages are also stored in bfloat16 or float16 (the queries stay float32).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from dynacomp.dmc.cache import DMCLayer, native


def filled_layer(keys: torch.Tensor, values: torch.Tensor, page_size: int) -> DMCLayer:
    """A layer holding keys/values (rows, slots, D) as the rows of one sequence, its rows' pages
    allocated in shuffled order (through the layer's private writer: no model runs here)."""
    rows, slots, dim = keys.shape
    layer = DMCLayer(page_size, window=1)
    layer.lazy_initialization(keys.new_zeros(1, rows, 1, dim))
    layer.reserve(1)
    for page in torch.randperm(rows * (slots // page_size)).tolist():
        row, first = divmod(page, slots // page_size)
        index = torch.arange(first * page_size, (first + 1) * page_size)
        layer._write(torch.full_like(index, row), index, keys[row, index], values[row, index])
    layer._slots[:] = slots
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--slots", type=int, nargs="+", default=[4096])
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                        help="page dtypes of the native kernel (the PyTorch page path runs on float32 pages)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not native.supports(torch.zeros(1, 1, args.dim)):
        raise SystemExit("the native kernel is not available here (see dynacomp.dmc.cache.native)")
    for slots in args.slots:
        compare(args, slots)


def compare(args: argparse.Namespace, slots: int) -> None:
    """Every path over the same ``slots`` keys per row, timed in interleaved rounds."""
    scale = args.dim ** -0.5
    queries = torch.randn(args.rows, args.queries, args.dim)
    one, rows = torch.tensor([0]), torch.arange(args.rows)
    keys, values = torch.randn(2, args.rows, slots, args.dim)
    calls = {"dense SDPA, float32": (4, lambda: F.scaled_dot_product_attention(
        queries[:, None], keys[:, None], values[:, None], scale=scale)[:, 0])}
    for page in args.page_sizes:
        layer = filled_layer(keys, values, page)
        calls[f"pages of {page}, PyTorch, float32"] = (4, lambda layer=layer: layer.attend_split_k(
            rows, queries, layer._slots, scale, with_lse=False)[0])
        for name in args.dtypes:
            stored = copy.copy(layer)
            stored._k_pool, stored._v_pool = (pool.to(getattr(torch, name)) for pool in (layer._k_pool, layer._v_pool))
            calls[f"pages of {page}, native, {name}"] = (
                stored._k_pool.element_size(), lambda stored=stored: stored.attend(one, queries, scale, with_lse=False)[0])
    reference = calls["dense SDPA, float32"][1]()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, (_, call) in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    print(f"{args.rows} rows x {args.queries} queries, {slots} slots, head dim {args.dim}, "
          f"{args.threads} threads, medians of {args.repeats}")
    for name, (itemsize, call) in calls.items():
        error = (call() - reference).abs().max().item()
        seconds = statistics.median(times[name])
        read = 2 * args.rows * slots * args.dim * itemsize / seconds / 1e9
        print(f"{name:<34} {seconds * 1000:7.2f} ms  {read:5.1f} GB/s   max |diff| {error:.1e}")


if __name__ == "__main__":
    main()
