import torch

from dynacomp.nn.pooling import mean_pool, segment_sums, upsample


def _random_boundaries(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, generator=g) < 0.3).float()


def _groups(row: list[float]) -> list[list[int]]:
    """Positions of each segment of one row, the unclosed tail last (if any)."""
    groups, current = [], []
    for t, b in enumerate(row):
        current.append(t)
        if b:
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


def test_mean_pool_matches_a_loop():
    B, T, D = 3, 17, 5
    x = torch.randn(B, T, D)
    b = _random_boundaries(B, T)
    b[2] = 0  # a row with no closed group
    pooled = mean_pool(x, b)
    S = int(b.sum(1).max())
    assert pooled.shape == (B, S, D)
    for i in range(B):
        closed = int(b[i].sum())
        for s, positions in enumerate(_groups(b[i].tolist())[:closed]):
            torch.testing.assert_close(pooled[i, s], x[i, positions].mean(0))
        assert (pooled[i, closed:] == 0).all()


def test_segment_sums_include_the_unclosed_tail():
    x = torch.arange(6.0).view(1, 6, 1)
    b = torch.tensor([[0, 1, 0, 0, 1, 0.0]])
    sums, sizes = segment_sums(x, b, 3)
    assert sums.flatten().tolist() == [1.0, 9.0, 5.0]
    assert sizes.flatten().tolist() == [2.0, 3.0, 1.0]


def test_upsample_matches_a_loop_and_never_leaks_the_future():
    B, T, D = 2, 15, 4
    b = _random_boundaries(B, T, seed=1)
    S = int(b.sum(1).max())
    summaries = torch.randn(B, 1 + S, D)
    up = upsample(summaries, b)
    for i in range(B):
        closed = 0
        for t in range(T):
            closed += int(b[i, t])
            torch.testing.assert_close(up[i, t], summaries[i, closed])  # groups closed at or before t
    # The summary of the group containing t reaches t only if t is its last element.
    for i in range(B):
        for s, positions in enumerate(_groups(b[i].tolist())[:int(b[i].sum())]):
            for t in positions[:-1]:
                assert not torch.equal(up[i, t], summaries[i, s + 1])
            torch.testing.assert_close(up[i, positions[-1]], summaries[i, s + 1])


def test_pooling_passes_gradient_to_boundaries():
    x = torch.randn(1, 8, 3)
    b = torch.tensor([[0, 1, 0, 0, 1, 0, 1, 0.0]], requires_grad=True)
    (mean_pool(x, b) * torch.randn(1, 3, 3)).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
