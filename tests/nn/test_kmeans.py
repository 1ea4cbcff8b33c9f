"""k-means++ seeding and Lloyd iterations."""

import torch

from dynacomp.nn.kmeans import assign, kmeans, kmeans_plus_plus


def blobs(k: int = 4, per: int = 100, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 3, generator=g) * 5
    return centres, (centres[:, None] + spread * torch.randn(k, per, 3, generator=g)).reshape(-1, 3)


def test_assign_is_nearest():
    x, c = torch.randn(50, 4), torch.randn(7, 4)
    index, dist = assign(x, c, chunk=8)
    full = torch.cdist(x, c) ** 2
    assert torch.equal(index, full.argmin(1)) and torch.allclose(dist, full.min(1).values, atol=1e-4)


def test_kmeans_plus_plus_seeds_every_blob():
    """D^2 sampling picks one seed per well-separated blob (random seeding often misses one)."""
    centres, x = blobs()
    for seed in range(5):
        seeds = kmeans_plus_plus(x, 4, generator=torch.Generator().manual_seed(seed))
        assert sorted(assign(seeds, centres)[0].tolist()) == [0, 1, 2, 3]


def test_kmeans_plus_plus_avoids_fixed_centres():
    centres, x = blobs()
    new = kmeans_plus_plus(x, 1, fixed=centres[:3], generator=torch.Generator().manual_seed(0))
    assert assign(new, centres)[0].item() == 3


def test_lloyd_finds_blobs_and_refills_empty_clusters():
    centres, x = blobs()
    start = torch.cat([x[0:1], x[100:101], x[200:201], torch.full((1, 3), 1e3)])  # the last one: empty
    found, counts = kmeans(x, start, iters=50)
    assert counts.tolist() == [100, 100, 100, 100]
    assert torch.cdist(found, centres).min(0).values.max() < 0.1


def test_lloyd_keeps_frozen_centres():
    centres, x = blobs()
    start = torch.cat([centres[:2], torch.zeros(2, 3)])
    frozen = torch.tensor([True, True, False, False])
    found, _ = kmeans(x, start, iters=50, frozen=frozen)
    assert torch.equal(found[:2], centres[:2])
    assert torch.cdist(found[2:], centres[2:]).min(1).values.max() < 0.1
