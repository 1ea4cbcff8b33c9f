"""Codebook usage metrics against hand-computed values."""

import pytest
import torch

from dynacomp.metrics.codebook import code_counts, codebook_stats, dead_codes, entropy, normalized_usage, perplexity


def test_counts_skip_padding_and_masked():
    indices = torch.tensor([[0, 1, 1, -1], [3, 3, 3, 2]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert code_counts(indices, 5).tolist() == [1, 2, 1, 3, 0]
    assert code_counts(indices, 5, mask).tolist() == [1, 2, 0, 2, 0]


def test_uniform_and_collapsed():
    uniform = torch.full((8,), 10)
    assert normalized_usage(uniform) == pytest.approx(1.0) and perplexity(uniform) == pytest.approx(8.0)
    assert dead_codes(uniform) == 0
    one = torch.tensor([0, 0, 7, 0])
    assert normalized_usage(one) == 0.0 and perplexity(one) == 1.0 and dead_codes(one) == 3
    assert entropy(torch.zeros(4, dtype=torch.long)) == 0.0


def test_half_used():
    counts = torch.tensor([5, 5, 0, 0])     # two of four codes, equally: H = log 2
    assert codebook_stats(counts) == pytest.approx({"usage": 0.5, "perplexity": 2.0, "dead_codes": 2})
    assert dead_codes(torch.tensor([1, 2, 3]), threshold=2) == 1
