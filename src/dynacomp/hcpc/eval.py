"""Evaluation of a trained model on a speech set: phone segmentation, ABX, linear phone probe.

Segmentation is scored on whole utterances with pooled counts, strictly and leniently, for three
segmenters: periodic boundaries at the mean phone duration of the training labels, peaks of the
frame dissimilarity ``1 - cos(z_t, z_t+1)`` of the encoder (prominence chosen on the validation
split for the best R-value, per matching rule), and the model's own boundaries when it has a high
level. ABX and the probe score the low-level contexts ``c`` and, with a high level, the segment
contexts ``h`` repeated over their frames, the segments read out as the peaks of the boundary
logits at the strict prominence chosen on validation (the argmax decisions of a policy that is not
yet decisive close no segment, and would leave one high-level vector per utterance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynacomp.config import field, require_positive
from dynacomp.console import progress
from dynacomp.data.speech import Utterance, boundaries_in_frames, frame_labels, read_audio
from dynacomp.data.speech_corpora import load_speech
from dynacomp.hcpc.model import FRAME, HCPC, Segmentation
from dynacomp.metrics.abx import Item, abx_error, items_from_utterances, read_item_file
from dynacomp.metrics.probe import ProbeConfig, linear_probe
from dynacomp.metrics.segmentation import choose_prominence, peak_boundaries, periodic_boundaries, score

FRAME_RATE = 100.0   # frames per second at 16 kHz


@dataclass
class EvalConfig:
    split: str = field("test", help="split scored (prominence is always chosen on validation)")
    tolerance: float = field(0.02, help="boundary tolerance in seconds (20 ms = 2 frames)")
    max_utterances: int = field(0, help="score only the first N utterances of each split (0: all)")
    abx: bool = field(True, help="compute ABX within and across speaker")
    abx_max_per_group: int = field(5, help="ABX: items kept per (context, phone, speaker)")
    items: Path | None = field(None, help="ABX item file (ZeroSpeech format; default: made from the labels)")
    probe: bool = field(True, help="train and score a linear phone probe")
    probe_utterances: int = field(50, help="training utterances of the probe")
    probe_steps: int = field(200, help="full-batch steps of the probe")

    def __post_init__(self) -> None:
        if self.split == "validation":
            raise ValueError("the validation split chooses the peak prominences; score another split (test)")
        require_positive(self, "tolerance", "abx_max_per_group", "probe_utterances", "probe_steps")
        if self.max_utterances < 0:
            raise ValueError(f"EvalConfig.max_utterances (--max-utterances) is >= 0 (0: all), got {self.max_utterances}")


def segment_all(model: HCPC, utterances: Sequence[Utterance], desc: str = "segment",
                prominence: float | None = None) -> list[Segmentation]:
    return [model.segment(read_audio(u), prominence) for u in progress(utterances, desc=desc)]


def dissimilarity(z: torch.Tensor) -> np.ndarray:
    """``1 - cos(z_t, z_t+1)`` for ``z (T, D)``: ``(T - 1,)``."""
    return (1 - torch.nn.functional.cosine_similarity(z[:-1], z[1:], dim=-1)).numpy()


def mean_phone_frames(utterances: Sequence[Utterance]) -> float:
    """Frames per phone over a set: all frames over all reference segments."""
    frames = sum(u.phones[-1][1] / FRAME for u in utterances)
    return frames / sum(len(boundaries_in_frames(u)) + 1 for u in utterances)


def both_modes(reference: list[list[int]], predicted: list[list[int]], tolerance: float) -> dict[str, dict]:
    return {mode: score(reference, predicted, tolerance, strict=mode == "strict", frame_rate=FRAME_RATE)
            for mode in ("strict", "lenient")}


def segmentation_scores(model: HCPC, validation: Sequence[Utterance], test: Sequence[Utterance],
                        period: float, tolerance: float) -> tuple[dict[str, Any], list[Segmentation]]:
    """Scores of the periodic, peak and (with a high level) model segmenters on ``test``; also the
    test segmentations, for reuse."""
    val_seg, test_seg = segment_all(model, validation, "validation"), segment_all(model, test, "test")
    val_ref = [boundaries_in_frames(u) for u in validation]
    test_ref = [boundaries_in_frames(u) for u in test]
    results: dict[str, Any] = {"periodic": {"period_frames": period, **both_modes(
        test_ref, [periodic_boundaries(len(s.z), period) for s in test_seg], tolerance)}}

    def peaks(curve: Callable[[Segmentation], np.ndarray]) -> dict[str, dict]:
        """Peaks of ``curve`` (entry t: frame t+1 starts a segment), prominence chosen on validation."""
        val_curves, test_curves = [curve(s) for s in val_seg], [curve(s) for s in test_seg]
        out = {}
        for mode in ("strict", "lenient"):
            prominence, _ = choose_prominence(val_ref, val_curves, tolerance, mode == "strict", frame_rate=FRAME_RATE)
            predicted = [peak_boundaries(c, prominence) for c in test_curves]
            out[mode] = {"prominence": prominence,
                         **score(test_ref, predicted, tolerance, mode == "strict", frame_rate=FRAME_RATE)}
        return out

    results["peaks"] = peaks(lambda s: dissimilarity(s.z))
    if model.config.hierarchical:
        results["model"] = both_modes(test_ref, [s.boundaries for s in test_seg], tolerance)
        # The boundary predictor's own scores read out like the baseline: its peaks (the closing
        # logit of frame t), independent of where the argmax threshold happens to fall.
        results["model_peaks"] = peaks(lambda s: s.closing_scores)
    return results, test_seg


def _levels(segmentations: Sequence[Segmentation]) -> dict[str, list[torch.Tensor]]:
    levels = {"low": [s.c for s in segmentations]}
    if segmentations and segmentations[0].high is not None:
        levels["high"] = [s.high for s in segmentations]
    return levels


def abx_scores(utterances: Sequence[Utterance], segmentations: Sequence[Segmentation], items: list[Item],
               max_per_group: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{level: {within|across: abx_error(...)}}``: the error with its cell and triplet counts."""
    out = {}
    for level, features in _levels(segmentations).items():
        by_file = {u.id: f.numpy() for u, f in zip(utterances, features)}
        out[level] = {mode: abx_error(by_file, items, FRAME_RATE, mode, max_per_group) for mode in ("within", "across")}
    return out


def probe_scores(model: HCPC, train: Sequence[Utterance], test: Sequence[Utterance],
                 test_seg: Sequence[Segmentation], config: ProbeConfig, prominence: float | None
                 ) -> dict[str, dict[str, float]]:
    train_seg = segment_all(model, train, "probe", prominence)
    train_levels, test_levels = _levels(train_seg), _levels(test_seg)
    train_y = [y for u, s in zip(train, train_seg) for y in frame_labels(u, FRAME, len(s.z))]
    test_y = [y for u, s in zip(test, test_seg) for y in frame_labels(u, FRAME, len(s.z))]
    return {level: linear_probe(torch.cat(train_levels[level]), train_y, torch.cat(test_levels[level]), test_y, config)
            for level in train_levels}


def evaluate(model: HCPC, data: Path, config: EvalConfig) -> dict[str, Any]:
    """Everything above for one model on the speech set ``data``."""
    def split(name: str) -> list[Utterance]:
        utterances = load_speech(data, name)
        return utterances[:config.max_utterances] if config.max_utterances else utterances

    train = load_speech(data, "train")
    test = split(config.split)
    period = mean_phone_frames(train)
    segmentation, test_seg = segmentation_scores(model, split("validation"), test, period, config.tolerance)
    results: dict[str, Any] = {"split": config.split, "utterances": len(test), "tolerance_s": config.tolerance,
                               "segmentation": segmentation}
    prominence = None
    if model.config.hierarchical:
        prominence = results["high_level_prominence"] = segmentation["model_peaks"]["strict"]["prominence"]
        test_seg = [model.resegment(s, prominence) for s in test_seg]
    if config.abx:
        items = read_item_file(config.items) if config.items else items_from_utterances(test)
        results["abx"] = abx_scores(test, test_seg, items, config.abx_max_per_group)
    if config.probe:
        spread = train[::max(1, len(train) // config.probe_utterances)][:config.probe_utterances]   # many voices
        results["probe"] = probe_scores(model, spread, test, test_seg, ProbeConfig(steps=config.probe_steps),
                                        prominence)
    return results
