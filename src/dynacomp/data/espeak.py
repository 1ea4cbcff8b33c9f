"""libespeak-ng (from the PyPI wheel ``espeakng-loader``) through ctypes: synthesis with an event
for every phone and word, and phone and word segments from those events."""

from __future__ import annotations

import ctypes
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynacomp.data.speech import SILENCE

ENGLISH_VOICES = ("en", "en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")

_SYNCHRONOUS = 2                  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_PHONEME_EVENTS, _PHONEME_IPA = 1, 2  # espeak_Initialize options
_EVENT_END_OF_LIST, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_RATE, _PITCH, _RANGE = 1, 3, 4   # espeak_PARAMETER
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_STRESS = str.maketrans("", "", "ˈˌ")
_MIN_GAP = 22                     # samples (1 ms at 22,050 Hz): a shorter zero run is a zero crossing


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of ``speak_lib.h``; ``sample`` counts from the start of the ``espeak_Synth``
    call, ``text_position`` is 1-based in characters."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class ESpeak:
    """libespeak-ng in this process, synthesising with phone events.

    The library is one global state per process, and that state carries over from one utterance to
    the next (timings shift by a few samples), so a reproducible job uses a fresh process.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise RuntimeError("speech synthesis needs libespeak-ng from PyPI: "
                               "pip install espeakng-loader") from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                                 _PHONEME_EVENTS | _PHONEME_IPA)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data at {espeakng_loader.get_data_path()}")
        self.version = lib.espeak_Info(None).decode()
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, Any]] = []
        self._callback = _SynthCallback(self._collect)  # kept: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((_EVENT_PHONEME, event.sample,
                                     event.id.string.decode("utf-8", errors="ignore")))
            elif event.type == _EVENT_WORD:
                self._events.append((_EVENT_WORD, event.sample, event.text_position))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, intonation: int, seed: int = 0
                   ) -> tuple[np.ndarray, list[tuple[int, int, Any]]]:
        """``(audio, events)``: int16 samples ``(T,)`` at ``self.sample_rate`` and, in stream order,
        ``(7, sample, ipa)`` for each phone (``""``: a pause) and ``(1, sample, text_position)`` for
        each word. ``seed`` fixes the noise some variants add (breathiness)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r} (English ones: {', '.join(ENGLISH_VOICES)}; "
                             f"variants: {', '.join(VARIANTS)}, written voice+variant)")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, intonation)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed (status {status}) on {text!r}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, self._events


def segments_from_events(audio: np.ndarray, events: Sequence[tuple[int, int, Any]], text: str
                         ) -> tuple[int, list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """Phone and word segments from eSpeak's events, in samples of ``audio``.

    Returns ``(end, phones, words)``: the speech ends at ``end`` (trailing silence is cut). A phone
    runs from its event to the next one; pause events (empty IPA) become ``"sil"``. eSpeak puts a
    stop's event at its burst, after the closure, and a word's first phone after a short gap, both
    exact digital silence: such a run of zeros is moved into the phone that follows it, so the
    boundary lies where the previous sound stops (closure included in the stop, as in forced
    alignments).
    """
    marks: list[list[Any]] = []   # [start, label, word index]
    word_starts: list[int] = []   # 1-based character position of each word
    for kind, sample, value in events:
        sample = max(sample, marks[-1][0] if marks else 0)
        if kind == _EVENT_WORD:
            if not word_starts or value > word_starts[-1]:  # a number read as several words: keep one
                word_starts.append(value)
        elif value.translate(_STRESS):
            marks.append([sample, value.translate(_STRESS), len(word_starts) - 1])
        elif not marks or marks[-1][1] != SILENCE:
            marks.append([sample, SILENCE, -1])
    end = len(audio)
    while marks and marks[-1][1] == SILENCE:   # the end-of-speech marker and trailing silence
        end = marks.pop()[0]
    if not marks:
        return 0, [], []
    marks[0][0] = 0   # leading digital silence belongs to the first phone
    # last_sound[i]: index of the last non-zero sample at or before i (-1: none yet)
    last_sound = np.maximum.accumulate(np.where(audio != 0, np.arange(len(audio)), -1))
    for prev, mark in zip(marks, marks[1:]):
        if SILENCE not in (prev[1], mark[1]) and mark[0] > prev[0]:
            sound_ends = int(last_sound[mark[0] - 1]) + 1
            if mark[0] - sound_ends >= _MIN_GAP and sound_ends > prev[0]:
                mark[0] = sound_ends
    ends = [m[0] for m in marks[1:]] + [end]
    phones = [(m[0], e, m[1]) for m, e in zip(marks, ends) if e > m[0]]

    words = []
    for w, position in enumerate(word_starts):
        spans = [(m[0], e) for m, e in zip(marks, ends) if m[2] == w and e > m[0]]
        following = word_starts[w + 1] if w + 1 < len(word_starts) else len(text) + 1
        # eSpeak may speak two words as one (``on the``): the span reaches the next word event.
        written = text[position - 1:following - 1].strip().strip(string.punctuation + "“”‘’ ")
        if spans and written:
            words.append((spans[0][0], spans[-1][1], written))
    return end, phones, words
