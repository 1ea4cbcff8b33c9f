import math

import pytest
import torch
import torch.nn.functional as F

from dynacomp.metrics.bpc import bits_per_character, sum_nll


def test_uniform_model_costs_log2_vocabulary_bits():
    logits = torch.zeros(2, 50, 27)
    targets = torch.randint(0, 27, (2, 50))
    assert bits_per_character(sum_nll(logits, targets).item(), 100) == pytest.approx(math.log2(27))


def test_sum_nll_is_summed_cross_entropy():
    logits, targets = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)) * 21
    torch.testing.assert_close(sum_nll(logits, targets), expected)


def test_bits_per_character_needs_characters():
    with pytest.raises(ValueError):
        bits_per_character(1.0, 0)
