"""Two-process check of the quantiser under DDP, run by test_vq_ddp.py with torchrun (gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/nn/ddp_vq.py OUT_DIR

Each rank sees different data (rank 0 two clusters, rank 1 two others), trains a few steps
through DDP with the schedule running, and saves its codebook and counts for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dynacomp.nn import VectorQuantizer


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)                                   # the same initial codebook on both ranks
    vq = VectorQuantizer(3, 4, batch_norm=False, bypass_steps=2, reestimate_every=2, reestimate_until=4,
                         reservoir_size=64)   # no BatchNorm: each rank would normalise its own clusters
    model = DistributedDataParallel(vq, find_unused_parameters=True)
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)                          # different data and reservoir draws per rank
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0]]) * (1 if rank == 0 else -1)
    replaced = []
    for step in range(6):
        replaced.append(vq.on_step_start(step))
        x = (centres[:, None] + 0.1 * torch.randn(2, 40, 3)).reshape(-1, 3).requires_grad_()
        quantized, _, loss = model(x)
        (loss + quantized.square().mean()).backward()   # a stand-in for a decoder's loss
        optimizer.step()
        optimizer.zero_grad()
    vq.eval()
    _, indices, _ = vq(x)
    torch.save({"codebook": vq.codebook.detach(), "counts": vq.code_counts, "replaced": replaced,
                "indices": indices}, out / f"rank{rank}.pt")
    dist.barrier()                  # once, a rank leaving while the other was still in gloo aborted at exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
