"""Segmentation scores against hand-computed cases, both matching rules, and peak picking."""

import math

import numpy as np
import pytest

from dynacomp.metrics.segmentation import (
    choose_prominence,
    peak_boundaries,
    periodic_boundaries,
    score,
    scores_from_counts,
)

REF, PRED = [[10, 20, 30]], [[11, 12, 29, 40]]


def test_lenient_by_hand():
    # predictions 11, 12, 29 have a reference within 2 frames (11 and 12 both lean on 10): P = 3/4;
    # references 10 and 30 are found, 20 is not: R = 2/3.
    s = score(REF, PRED, tolerance=2)
    assert (s["precision_hits"], s["recall_hits"], s["n_predicted"], s["n_reference"]) == (3, 2, 4, 3)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    os_ = (2 / 3) / 0.75 - 1                                    # -1/9
    r1, r2 = math.sqrt((1 / 3) ** 2 + os_ ** 2), (2 / 3 - 1 - os_) / math.sqrt(2)
    assert s["r_value"] == pytest.approx(1 - (abs(r1) + abs(r2)) / 2)
    assert s["r_value"] == pytest.approx(0.74575, abs=1e-5)


def test_strict_by_hand():
    # one-to-one: 10-11 and 30-29; 12 has only 10, already taken. P = 2/4, R = 2/3, OS = 1/3.
    s = score(REF, PRED, tolerance=2, strict=True)
    assert (s["precision_hits"], s["recall_hits"]) == (2, 2)
    assert (s["precision"], s["recall"]) == pytest.approx((0.5, 2 / 3))
    assert s["f1"] == pytest.approx(4 / 7)
    assert s["r_value"] == pytest.approx(1 - math.sqrt(2) / 3)   # r1 = sqrt(2)/3 = |r2|


def test_strict_matching_is_maximal():
    # a greedy "nearest first" rule would pair 11 with 12 and lose 10; the sweep finds both
    assert score([[10, 12]], [[11, 13]], tolerance=1, strict=True)["precision_hits"] == 2
    assert score([[10, 12]], [[11]], tolerance=1, strict=True)["recall_hits"] == 1
    assert score([[10]], [[13]], tolerance=2, strict=True)["precision_hits"] == 0


def test_counts_are_pooled_over_utterances():
    s = score([[10], [10, 20, 30, 40]], [[10], []], tolerance=0)
    assert s["recall"] == pytest.approx(1 / 5)                 # averaged per utterance it would be 1/2
    assert s["precision"] == 1.0


def test_tolerance_in_seconds():
    in_frames = score(REF, PRED, tolerance=2, strict=True)
    assert score(REF, PRED, tolerance=0.02, strict=True, frame_rate=100) == in_frames
    assert score(REF, PRED, tolerance=0.01, frame_rate=100)["precision_hits"] == 2   # 11 and 29
    assert score([[0]], [[29]], tolerance=0.29, frame_rate=100)["recall"] == 1.0    # 0.29 * 100 is 28.999...
    with pytest.raises(ValueError, match="frame_rate"):
        score(REF, PRED, tolerance=0.02)       # seconds without their rate would mean exact matches only


def test_edge_cases():
    assert score([[]], [[]], 2)["f1"] == 0.0 and score([[]], [[3]], 2)["r_value"] == 0.0
    # Nothing predicted: HR 0, OS -1, r1 sqrt(2), r2 0: R-value 1 - sqrt(2) / 2, as Räsänen's formula gives.
    assert score([[5]], [[]], 2)["r_value"] == pytest.approx(1 - math.sqrt(2) / 2)
    # Missing everything never scores above hitting something (OS from the counts, not R / P).
    assert scores_from_counts(10, 100, 0, 0)["r_value"] < scores_from_counts(10, 100, 10, 10)["r_value"]
    perfect = scores_from_counts(10, 10, 10, 10)
    assert perfect["r_value"] == pytest.approx(1.0) and perfect["over_segmentation"] == 0.0
    with pytest.raises(ValueError):
        score([[1]], [], 2)


def test_peaks_and_prominence():
    d = np.array([0, 1, 0, 0.3, 0.2, 0.9, 0])     # peaks at 1 (prominence 1), 3 (0.1), 5 (0.9)
    assert peak_boundaries(d, 0.05) == [2, 4, 6]  # a peak at t starts a segment at t + 1
    assert peak_boundaries(d, 0.5) == [2, 6]
    assert peak_boundaries(5 * d + 3, 0.5) == [2, 6]   # min-max normalised per utterance
    prominence, best = choose_prominence([[2, 6]], [d], tolerance=0, grid=(0.05, 0.5))
    assert prominence == 0.5 and best["f1"] == 1.0
    assert choose_prominence([[2, 6]], [d], tolerance=0, grid=(0.6, 0.5))[0] == 0.5   # a tie: the smaller


def test_periodic():
    assert periodic_boundaries(10, 3) == [3, 6, 9]
    assert periodic_boundaries(10, 5) == [5]
