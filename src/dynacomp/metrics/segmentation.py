"""Phone-segmentation scores: precision, recall, F1 and R-value, strict or lenient, pooled counts.

A boundary is a frame index: the first frame of a new segment. ``reference`` and ``predicted``
hold one list per utterance; counts are summed over all utterances before any ratio is taken
(not averaged per batch, which the hCPC evaluator does). Two matching rules:

- lenient (Kreuk et al. 2020): a prediction is a hit when some reference lies within
  ``tolerance``, and a reference is found when some prediction does; one reference may confirm
  several predictions, so precision and recall have separate hit counts.
- strict (one-to-one, "harsh" in Strgar & Harwath 2022; Kamper's evaluator): each reference
  matches at most one prediction and vice versa; the hit count is a maximum matching.

R-value (Räsänen et al. 2009): with over-segmentation ``OS = R / P - 1``,
``r1 = sqrt((1 - R)^2 + OS^2)``, ``r2 = (R - 1 - OS) / sqrt(2)``, ``R-value = 1 - (|r1| + |r2|) / 2``.
Under lenient matching one reference may confirm several predictions, so ``R / P`` can miss
over-segmentation (five predictions around one reference score 1); strict scores do not.

``peak_boundaries`` turns a per-frame dissimilarity into boundaries by peak picking
(``scipy.signal.find_peaks`` on min-max normalised scores), and ``choose_prominence`` picks the
prominence that gives the best R-value on validation data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import find_peaks

PROMINENCE_GRID = tuple(round(0.01 * i, 2) for i in range(16))   # 0 .. 0.15, Kreuk et al.'s search


def _tolerance_frames(tolerance: float, frame_rate: float | None) -> float:
    """``tolerance`` in frames: as given, or seconds times ``frame_rate`` (frames per second)."""
    if frame_rate is None and not float(tolerance).is_integer():
        # boundaries are whole frames: a fractional tolerance is a tolerance in seconds without its rate
        raise ValueError(f"tolerance {tolerance} is in frames (whole ones) unless frame_rate is given; "
                         f"for seconds pass e.g. frame_rate=100")
    frames = tolerance if frame_rate is None else tolerance * frame_rate
    return round(frames, 9)   # 0.02 s * 100 Hz is 2.0000000000000004 in floating point


def _lenient_hits(reference: np.ndarray, predicted: np.ndarray, tolerance: float) -> tuple[int, int]:
    """(predictions with a reference within tolerance, references with a prediction within tolerance)."""
    if len(reference) == 0 or len(predicted) == 0:
        return 0, 0
    distance = np.abs(predicted[:, None] - reference[None, :])      # (P, R)
    close = distance <= tolerance
    return int(close.any(1).sum()), int(close.any(0).sum())


def _strict_hits(reference: np.ndarray, predicted: np.ndarray, tolerance: float) -> int:
    """Size of a maximum one-to-one matching of references and predictions within tolerance.

    All tolerance windows have the same width, so a greedy sweep is optimal: take references in
    order and give each the earliest unused prediction that is not too early and not too late.
    """
    reference, predicted = np.sort(reference), np.sort(predicted)
    hits, j = 0, 0
    for r in reference:
        while j < len(predicted) and predicted[j] < r - tolerance:
            j += 1
        if j < len(predicted) and predicted[j] <= r + tolerance:
            hits += 1
            j += 1
    return hits


def scores_from_counts(n_reference: int, n_predicted: int, precision_hits: int, recall_hits: int) -> dict[str, float]:
    """Precision, recall, F1, over-segmentation and R-value from pooled counts.

    Without hits, ``R / P`` is undefined and OS is Räsänen's ``n_predicted / n_reference - 1`` (its
    value under one-to-one matching), so a miss never scores above a partial hit. Without
    references nothing can be scored: every value is 0."""
    if not n_reference:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "r_value": 0.0, "over_segmentation": 0.0}
    precision = precision_hits / n_predicted if n_predicted else 0.0
    recall = recall_hits / n_reference
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    os_ = recall / precision - 1 if precision else n_predicted / n_reference - 1
    r1 = math.sqrt((1 - recall) ** 2 + os_ ** 2)
    r2 = (recall - 1 - os_) / math.sqrt(2)
    r_value = 1 - (abs(r1) + abs(r2)) / 2
    return {"precision": precision, "recall": recall, "f1": f1, "r_value": r_value, "over_segmentation": os_}


def score(reference: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]], tolerance: float,
          strict: bool = False, frame_rate: float | None = None) -> dict[str, float]:
    """Pooled boundary scores of ``predicted`` against ``reference`` (one list of frame indices per
    utterance). ``tolerance`` is in frames, or in seconds when ``frame_rate`` (frames per second)
    is given: 2 frames == 0.02 s at 100 Hz. A boundary matches when ``|p - r| <= tolerance``.

    Returns ``precision, recall, f1, r_value, over_segmentation`` and the counts ``n_reference,
    n_predicted, precision_hits, recall_hits``.
    """
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference utterances but {len(predicted)} predicted")
    tol = _tolerance_frames(tolerance, frame_rate)
    n_ref = n_pred = hits_p = hits_r = 0
    for ref, pred in zip(reference, predicted):
        ref, pred = np.unique(np.asarray(ref, dtype=float)), np.unique(np.asarray(pred, dtype=float))
        n_ref, n_pred = n_ref + len(ref), n_pred + len(pred)
        if strict:
            hits = _strict_hits(ref, pred, tol)
            hits_p, hits_r = hits_p + hits, hits_r + hits
        else:
            p, r = _lenient_hits(ref, pred, tol)
            hits_p, hits_r = hits_p + p, hits_r + r
    return {**scores_from_counts(n_ref, n_pred, hits_p, hits_r), "n_reference": n_ref, "n_predicted": n_pred,
            "precision_hits": hits_p, "recall_hits": hits_r}


def peak_boundaries(dissimilarity: np.ndarray, prominence: float) -> list[int]:
    """Boundaries at peaks of ``dissimilarity (T - 1,)``, where entry ``t`` compares frames ``t`` and
    ``t + 1``: a peak at ``t`` starts a segment at frame ``t + 1``. Scores are min-max normalised
    per utterance, so ``prominence`` is a fraction of the utterance's range."""
    d = np.asarray(dissimilarity, dtype=float)
    if len(d) == 0:
        return []
    span = d.max() - d.min()
    d = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    peaks, _ = find_peaks(d, prominence=prominence)
    return [int(p) + 1 for p in peaks]


def choose_prominence(reference: Sequence[Sequence[int]], dissimilarities: Sequence[np.ndarray], tolerance: float,
                      strict: bool = False, grid: Sequence[float] = PROMINENCE_GRID,
                      frame_rate: float | None = None) -> tuple[float, dict[str, float]]:
    """The prominence in ``grid`` with the best pooled R-value (ties: the smaller), and its scores."""
    best: tuple[float, dict[str, float]] | None = None
    for prominence in sorted(grid):
        predicted = [peak_boundaries(d, prominence) for d in dissimilarities]
        result = score(reference, predicted, tolerance, strict, frame_rate)
        if best is None or result["r_value"] > best[1]["r_value"]:
            best = (float(prominence), result)
    if best is None:
        raise ValueError("the prominence grid is empty")
    return best


def periodic_boundaries(num_frames: int, period: float) -> list[int]:
    """A boundary every ``period`` frames (rounded), e.g. at the mean phone duration: the baseline
    that knows only the rate. ``num_frames``: the utterance's length."""
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    return [round(k * period) for k in range(1, math.ceil(num_frames / period)) if round(k * period) < num_frames]
