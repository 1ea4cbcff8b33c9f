"""dynacomp.data.espeak: the missing library's error, and segments from eSpeak's events."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dynacomp.data import espeak
from dynacomp.data.espeak import segments_from_events
from dynacomp.data.speech import SILENCE


def test_missing_espeakng_loader_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        espeak.ESpeak()


def test_segments_from_events_gives_closures_to_stops():
    """A stop's event comes at its burst after a silent closure: the closure joins the stop; pauses
    become one ``sil``; trailing silence is cut; words span their phones."""
    audio = np.ones(1000, np.int16)
    audio[300:400] = 0    # closure before the burst at 400
    audio[600:700] = 0    # a pause
    audio[950:] = 0       # trailing silence
    events = [(1, 0, 1), (7, 0, "ˈæ"), (7, 400, "t"), (7, 600, ""), (7, 700, ""), (1, 700, 5),
              (7, 700, "ɪ"), (7, 950, ""), (7, 1000, "")]
    end, phones, words = segments_from_events(audio, events, "at, it")
    assert end == 950
    assert phones == [(0, 300, "æ"), (300, 600, "t"), (600, 700, SILENCE), (700, 950, "ɪ")]
    assert words == [(0, 600, "at"), (700, 950, "it")]
