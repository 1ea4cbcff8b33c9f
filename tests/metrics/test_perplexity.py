"""Perplexity in windows: which tokens are scored, agreement with a direct computation, and the
cache path (a DMC model that never merges scores exactly like the plain model)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dynacomp.dmc import DMCConfig, convert, zero_decision_channels
from dynacomp.metrics.perplexity import perplexity, window_starts
from tests.dmc.tiny import tiny_model


def test_window_starts():
    assert window_starts(10, 4, 4) == [0, 4]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(3, 4, 4) == []
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 4, 5)


def test_non_overlapping_windows_match_a_direct_computation():
    model = tiny_model()
    ids = torch.randint(0, 97, (50,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, ids, context=16, batch_size=2)
    with torch.no_grad():
        windows = ids[:48].view(3, 16)
        logits = model(windows, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten())
    assert result["windows"] == 3 and result["tokens"] == 3 * 15  # a window's first token has no context
    assert result["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-5)


def test_strided_windows_score_each_token_once():
    model = tiny_model()
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, ids, context=16, stride=8)
    assert result["windows"] == 4 and result["tokens"] == 15 + 3 * 8
    # The batch size changes nothing.
    assert perplexity(model, ids, context=16, stride=8, batch_size=3)["nll"] == pytest.approx(result["nll"], rel=1e-5)


def test_through_a_cache_equals_teacher_forcing_when_nothing_merges():
    base = tiny_model()
    zero_decision_channels(base)
    dmc = convert(copy.deepcopy(base), DMCConfig(force_cr=1))
    ids = torch.randint(0, 97, (64,), generator=torch.Generator().manual_seed(2))
    plain = perplexity(base, ids, context=32, batch_size=2)
    cached = perplexity(dmc, ids, context=32, batch_size=2, cache_factory=dmc.new_cache)
    assert cached["nll"] == pytest.approx(plain["nll"], rel=1e-5)
