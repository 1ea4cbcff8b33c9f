"""ABX: item files, DTW by hand, error rates of hand-made features."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dynacomp.data.speech import Utterance
from dynacomp.metrics.abx import Item, abx_error, dtw_distances, items_from_utterances, read_item_file, write_item_file

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def test_items_and_item_file(tmp_path):
    utt = Utterance("u1", "spk", Path("u1.wav"), 16000,
                    [(0, 1600, "sil"), (1600, 3200, "a"), (3200, 4800, "b"), (4800, 6400, "sil")])
    items = items_from_utterances([utt])
    assert items == [Item("u1", 0.1, 0.2, "a", "sil", "b", "spk"), Item("u1", 0.2, 0.3, "b", "a", "sil", "spk")]
    path = write_item_file(tmp_path / "x.item", items)
    assert path.read_text().splitlines()[0] == "#file onset offset #phone prev-phone next-phone speaker"
    assert read_item_file(path) == items


def test_dtw_by_hand():
    seqs = [torch.tensor([E1]), torch.tensor([E2]), torch.tensor([E1, E1]), torch.tensor([E1, E2])]
    d = dtw_distances(seqs, [(0, 0), (0, 1), (2, 3)])
    # angle(e1, e2) / pi = 0.5; the best path over [[0, .5], [0, .5]] costs 0.5; divided by n + m
    assert d == pytest.approx([0.0, 0.5 / 2, 0.5 / 4])


def _features(a1, a2, b1, a3=E1):
    """One file, 2 frames per item at 100 Hz: a1, a2, b1 (speaker s1) then a3 (speaker s2)."""
    return {"f": np.array([a1, a1, a2, a2, b1, b1, a3, a3], dtype=np.float32)}


ITEMS = [Item("f", 0.00, 0.02, "a", "x", "y", "s1"), Item("f", 0.02, 0.04, "a", "x", "y", "s1"),
         Item("f", 0.04, 0.06, "b", "x", "y", "s1"), Item("f", 0.06, 0.08, "a", "x", "y", "s2")]


def test_abx_within_by_hand():
    perfect = abx_error(_features(E1, E1, E2), ITEMS, mode="within")
    assert perfect == {"error": 0.0, "cells": 1, "triplets": 2, "phone_pairs": 1}
    # a1 = e1, a2 = e2, b1 = e1: triplet (A=a1, B=b1, X=a2) ties (0.5); (A=a2, B=b1, X=a1) is wrong (1)
    assert abx_error(_features(E1, E2, E1), ITEMS, mode="within")["error"] == pytest.approx(0.75)


def test_abx_across_by_hand():
    result = abx_error(_features(E1, E1, E2), ITEMS, mode="across")
    assert (result["error"], result["triplets"]) == (0.0, 2)          # X = a3 from speaker s2
    assert abx_error(_features(E1, E1, E2, a3=E2), ITEMS, mode="across")["error"] == 1.0
    assert np.isnan(abx_error({}, ITEMS)["error"])


def test_abx_averages_over_contexts_then_speakers_then_pairs():
    """Speaker s1 has the pair (a, b) in two contexts, both right; s2 in one, at 0.75 (as above).
    libri-light's order of means gives (0 + 0.75) / 2; one flat mean over the cells would give 0.25."""
    frames, items = [], []
    for speaker, context, vectors in (("s1", "y", (E1, E1, E2)), ("s1", "z", (E1, E1, E2)), ("s2", "y", (E1, E2, E1))):
        for phone, vector in zip("aab", vectors):
            k = len(frames) // 2
            frames += [vector, vector]
            items.append(Item("f", 0.02 * k, 0.02 * (k + 1), phone, "x", context, speaker))
    result = abx_error({"f": np.array(frames, dtype=np.float32)}, items, mode="within")
    assert result["cells"] == 3 and result["error"] == pytest.approx(0.375)


def test_items_past_the_features_are_an_error():
    with pytest.raises(ValueError, match="past the end"):
        abx_error({"f": np.zeros((4, 2), dtype=np.float32)}, ITEMS)
