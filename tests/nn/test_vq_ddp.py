"""Two processes (torchrun, gloo): after re-estimation every rank holds the same codebook, and
it was estimated from both ranks' data."""

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("ddp_vq.py")


def test_ranks_agree_on_the_codebook_after_reestimation(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["replaced"] == ranks[1]["replaced"] == [False, False, True, False, True, False]
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert torch.equal(ranks[0]["counts"], ranks[1]["counts"])
    # Four codes for four clusters, two on each rank: every cluster has its own code.
    assert len(ranks[0]["indices"].unique()) == 2 and len(ranks[1]["indices"].unique()) == 2
    assert set(ranks[0]["indices"].tolist()).isdisjoint(ranks[1]["indices"].tolist())
