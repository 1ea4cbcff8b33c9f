import math

import pytest

from dynacomp.metrics.intervals import paired_perplexity_ratio, wilson


def test_paired_bootstrap_excludes_a_tie_only_when_the_difference_is_consistent():
    tokens = [100] * 40
    base = [300.0 + 40 * (i % 5) for i in range(40)]            # windows of very different difficulty
    better = [x - 5.0 for x in base]                            # A always 5 nats lower: a consistent win
    noisy = [x + (15.0 if i % 2 else -15.0) for i, x in enumerate(base)]   # no difference on average
    win = paired_perplexity_ratio(better, base, tokens)
    assert win["ratio"] == pytest.approx(math.exp(-5 / 100)) and win["high"] < 1
    tie = paired_perplexity_ratio(noisy, base, tokens)
    assert tie["low"] < 1 < tie["high"]


def test_wilson_matches_a_hand_computation():
    low, high = wilson(45, 50)
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(10, 10)[1] == pytest.approx(1.0)
