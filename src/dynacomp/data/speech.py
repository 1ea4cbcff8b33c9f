"""Speech with exact phone boundaries: eSpeak NG synthesis, the ``Utterance`` type, reading data sets.

No aligned recorded speech can be had offline, so ``synthesize_dataset`` makes some: libespeak-ng
(from the PyPI wheel ``espeakng-loader``) reports, for every phone it speaks, the sample where it
starts, so the labels are exact rather than forced-aligned. Several accents, voice variants, rates
and pitches give many "speakers"; the splits are by speaker, so test voices are never heard in
training. Layout of a synthesised set::

    DIR/manifest.json                          voices, splits, hours, phone inventory, config
    DIR/{train,validation,test}/{speaker}/{utt}.wav   16-bit PCM mono, 16 kHz
                                         .../{utt}.phn   TIMIT style: ``start end phone`` in samples
                                         .../{utt}.wrd   ``start end word(s)`` in samples
                                         .../{utt}.txt   the sentence read

Every loader (this synthetic set, and LibriSpeech, TIMIT, Buckeye in ``speech_corpora``) returns
``Utterance`` objects, so downstream models see one type.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import multiprocessing
import os
import random
import re
import string
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile
from scipy.signal import resample_poly

from dynacomp.config import field, to_dict
from dynacomp.console import progress
from dynacomp.io import atomic_path

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
SILENCE = "sil"
SPLITS = ("train", "validation", "test")
ENGLISH_VOICES = ("en", "en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")


# ----------------------------------------------------------------------------- the common type

@dataclass
class Utterance:
    """One recording with its time alignment; segment times are samples at ``sample_rate``.

    ``phones`` tile the utterance: ``(start, end, label)`` with each ``start`` the previous ``end``
    (loaders keep a corpus's own labels; untranscribed stretches are ``"sil"``).
    """

    id: str
    speaker: str
    audio_path: Path
    sample_rate: int
    phones: list[tuple[int, int, str]]
    words: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    text: str = ""


def read_audio(utt: Utterance) -> torch.Tensor:
    """The waveform as float32 in [-1, 1], shape ``(T,)`` (channels averaged if there are several)."""
    import torch  # here, not at the top: synthesis workers start faster without it

    audio, rate = soundfile.read(utt.audio_path, dtype="float32", always_2d=True)
    if rate != utt.sample_rate:
        raise ValueError(f"{utt.audio_path} is at {rate} Hz, its alignment at {utt.sample_rate} Hz")
    return torch.from_numpy(audio.mean(axis=1))


def boundaries_in_frames(utt: Utterance, frame_shift: int = 160) -> list[int]:
    """Interior phone boundaries as frame indices (``round(sample / frame_shift)``), sorted, unique.

    The utterance's own start and end are left out: every segmenter gets them for free.
    """
    return sorted({round(start / frame_shift) for start, _, _ in utt.phones[1:]} - {0})


def frame_labels(utt: Utterance, frame_shift: int = 160, num_frames: int | None = None) -> list[str]:
    """The phone under the centre of each frame (frame k centred on ``k*frame_shift + frame_shift//2``);
    frames past the last phone repeat its label. Default length: the frames that fit the phones."""
    end = utt.phones[-1][1]
    if num_frames is None:
        num_frames = end // frame_shift
    starts = np.array([s for s, _, _ in utt.phones])
    centres = np.arange(num_frames) * frame_shift + frame_shift // 2
    index = np.searchsorted(starts, centres, side="right") - 1
    return [utt.phones[i][2] for i in np.clip(index, 0, len(utt.phones) - 1)]


def read_segments(path: str | Path) -> list[tuple[int, int, str]]:
    """A TIMIT-style ``.phn``/``.wrd`` file: lines ``start end label`` (the label may hold spaces)."""
    segments = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3:
            segments.append((int(parts[0]), int(parts[1]), parts[2].strip()))
    return segments


def write_segments(path: str | Path, segments: Sequence[tuple[int, int, str]]) -> None:
    Path(path).write_text("".join(f"{s} {e} {label}\n" for s, e, label in segments), encoding="utf-8")


def load_dataset(root: str | Path, split: str) -> list[Utterance]:
    """The utterances of one split of a set written by ``synthesize_dataset``, sorted by id."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{root} is no synthetic speech set (no manifest.json): make one with "
                                f"`dynacomp data speech --hours 1 --out {root}`")
    manifest = json.loads(manifest_path.read_text())
    if split not in manifest["splits"]:
        raise ValueError(f"no split {split!r} in {root}; it has {', '.join(manifest['splits'])}")
    utterances = []
    for phn in sorted((root / split).glob("*/*.phn")):
        wrd, txt = phn.with_suffix(".wrd"), phn.with_suffix(".txt")
        utterances.append(Utterance(
            id=phn.stem, speaker=phn.parent.name, audio_path=phn.with_suffix(".wav"),
            sample_rate=manifest["sample_rate"], phones=read_segments(phn),
            words=read_segments(wrd) if wrd.exists() else [],
            text=txt.read_text(encoding="utf-8").strip() if txt.exists() else ""))
    return utterances


# ----------------------------------------------------------------------------- configuration

@dataclass
class SpeechSynthConfig:
    """What ``dynacomp data speech`` synthesises; every option is also a flag."""

    hours: float = field(1.0, help="hours of audio in all splits together (met approximately)")
    voices: tuple[str, ...] = field(ENGLISH_VOICES, help="eSpeak NG voices (accents)")
    variants: tuple[str, ...] = field(VARIANTS, help="eSpeak NG voice variants (pitch, formants); "
                                                     "each voice+variant pair is one speaker")
    rate: tuple[int, int] = field((140, 210), help="range of speaker rates, words per minute")
    rate_jitter: float = field(0.1, help="per-utterance relative change of a speaker's rate")
    pitch: tuple[int, int] = field((25, 75), help="range of speaker base pitch, 0-99")
    intonation: tuple[int, int] = field((30, 80), help="range of speaker pitch range, 0-99")
    validation_fraction: float = field(0.1, help="share of speakers, hours and sentences for validation")
    test_fraction: float = field(0.1, help="share of speakers, hours and sentences for test")
    text: Path | None = field(None, help="UTF-8 text file to read sentences from "
                                         "(default: the embedded corpus named by --corpus)")
    corpus: str = field("english", help="embedded text corpus (dynacomp.data.text) when no --text")
    min_chars: int = field(20, help="shortest sentence kept, characters")
    max_chars: int = field(200, help="longest sentence kept, characters")
    seed: int = field(0, help="seed for speakers, splits and sentence order")
    workers: int = field(0, help="processes synthesising in parallel (0: all cores)")

    def __post_init__(self) -> None:
        for name in ("rate", "pitch", "intonation"):
            bounds = tuple(getattr(self, name))
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"{name} is a range, two numbers LOW HIGH; got {bounds}")
        if self.hours <= 0 or not self.voices:
            raise ValueError("give some hours (--hours > 0) and at least one voice")


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: an eSpeak NG voice spec (``en-us+f2``) and its prosody settings."""

    name: str
    rate: int
    pitch: int
    intonation: int


def make_voices(config: SpeechSynthConfig) -> list[Voice]:
    """One speaker per voice x variant, each with its own rate, pitch and intonation range."""
    rng = random.Random(config.seed)
    voices = []
    for voice in config.voices:
        for variant in config.variants or ("",):
            voices.append(Voice(name=f"{voice}+{variant}" if variant else voice,
                                rate=rng.randint(*config.rate), pitch=rng.randint(*config.pitch),
                                intonation=rng.randint(*config.intonation)))
    return voices


def _split_sizes(n: int, config: SpeechSynthConfig) -> dict[str, int]:
    """Split sizes of ``n`` items, at least one per split."""
    if n < len(SPLITS):
        raise ValueError(f"{n} items cannot fill the {len(SPLITS)} splits")
    test = max(1, round(n * config.test_fraction))
    validation = max(1, round(n * config.validation_fraction))
    if test + validation >= n:
        raise ValueError(f"validation and test fractions leave nothing of {n} items for training")
    return {"train": n - validation - test, "validation": validation, "test": test}


def _partition(items: Sequence[Any], config: SpeechSynthConfig, salt: str) -> dict[str, list[Any]]:
    """Shuffle ``items`` (seeded) and cut them into disjoint train/validation/test parts."""
    items = list(items)
    random.Random(f"{config.seed}-{salt}").shuffle(items)
    parts, start = {}, 0
    for split, size in _split_sizes(len(items), config).items():
        parts[split] = items[start:start + size]
        start += size
    return parts


def sentences_from_text(text: str, min_chars: int = 20, max_chars: int = 200) -> list[str]:
    """Sentences of running text, whitespace collapsed, bracketed stage directions dropped, of
    ``min_chars..max_chars`` and 3 words or more, first occurrence only (a data set should not
    read the same line twice)."""
    text = re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", " ", text))
    sentences = re.split(r"(?<=[.!?])[\"'”’)]*\s+", text)
    kept = (s.strip() for s in sentences)
    return list(dict.fromkeys(s for s in kept if min_chars <= len(s) <= max_chars and len(s.split()) >= 3))


# ----------------------------------------------------------------------------- eSpeak NG

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


def _rescale(segments: Sequence[tuple[int, int, str]], src: int, dst: int) -> list[tuple[int, int, str]]:
    """Segments from ``src`` Hz to ``dst`` Hz samples (rounded), dropping any that shrink to nothing."""
    convert = lambda s: (s * dst + src // 2) // src  # noqa: E731  (exact integer rounding)
    return [(convert(s), convert(e), label) for s, e, label in segments if convert(e) > convert(s)]


def synthesize_utterance(engine: ESpeak, text: str, voice: Voice, rate: int | None = None, seed: int = 0,
                         sample_rate: int = SAMPLE_RATE
                         ) -> tuple[np.ndarray, list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """``(audio, phones, words)``: float32 audio ``(T,)`` at ``sample_rate``, with phone segments
    tiling ``[0, T)`` and word segments, in samples."""
    raw, events = engine.synthesize(text, voice.name, rate or voice.rate, voice.pitch, voice.intonation, seed)
    end, phones, words = segments_from_events(raw, events, text)
    if not phones:
        return np.zeros(0, np.float32), [], []
    g = math.gcd(sample_rate, engine.sample_rate)
    audio = resample_poly(raw[:end].astype(np.float32) / 32768, sample_rate // g, engine.sample_rate // g)
    phones = _rescale(phones, engine.sample_rate, sample_rate)
    words = _rescale(words, engine.sample_rate, sample_rate)
    return audio[:phones[-1][1]].astype(np.float32), phones, words  # resample_poly rounds the length up


# ----------------------------------------------------------------------------- data sets

@dataclass(frozen=True)
class _Job:
    split: str
    voice: Voice
    utt_id: str
    text: str
    rate: int
    seed: int


_CHUNK = 32  # utterances per worker process; fixed so that the output does not depend on --workers
_CHARS_PER_SECOND_PER_WPM = 0.106  # eSpeak NG English voices, measured: duration estimate for planning


def _plan(voices: dict[str, list[Voice]], sentences: Mapping[str, Sequence[str]],
          config: SpeechSynthConfig) -> list[_Job]:
    """Who reads what: per split, sentences in seeded order, speakers in turn, until the split's
    share of ``config.hours`` (estimated from length and rate) is reached; at least one each."""
    shares = {"train": 1 - config.validation_fraction - config.test_fraction,
              "validation": config.validation_fraction, "test": config.test_fraction}
    jobs = []
    for split in SPLITS:
        rng = random.Random(f"{config.seed}-{split}-plan")
        order = list(sentences[split])
        if not order:
            raise ValueError(f"no sentences for the {split} split")
        rng.shuffle(order)
        target, seconds, counts = config.hours * 3600 * shares[split], 0.0, Counter()
        while seconds < target or not counts:
            n = sum(counts.values())
            voice = voices[split][n % len(voices[split])]
            text = order[n % len(order)]
            rate = round(voice.rate * (1 + config.rate_jitter * rng.uniform(-1, 1)))
            utt_id = f"{voice.name}_{counts[voice.name]:05d}"
            seed = zlib.crc32(f"{config.seed}-{utt_id}".encode())
            jobs.append(_Job(split, voice, utt_id, text, rate, seed))
            counts[voice.name] += 1
            seconds += len(text) / (_CHARS_PER_SECOND_PER_WPM * rate)
    return jobs


def _synthesize_chunk(root: str, jobs: list[_Job]) -> list[dict[str, Any]]:
    """Worker: synthesise and write ``jobs`` under ``root``; one summary per utterance."""
    engine = ESpeak()
    summaries = []
    for job in jobs:
        audio, phones, words = synthesize_utterance(engine, job.text, job.voice, job.rate, job.seed)
        if not phones:
            continue
        folder = Path(root) / job.split / job.voice.name
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / job.utt_id
        soundfile.write(stem.with_suffix(".wav"), np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        write_segments(stem.with_suffix(".phn"), phones)
        write_segments(stem.with_suffix(".wrd"), words)
        stem.with_suffix(".txt").write_text(job.text + "\n", encoding="utf-8")
        summaries.append({"split": job.split, "speaker": job.voice.name, "seconds": len(audio) / SAMPLE_RATE,
                          "phones": Counter(label for _, _, label in phones), "synthesizer": engine.version})
    return summaries


def _run(root: Path, jobs: list[_Job], workers: int) -> list[dict[str, Any]]:
    """Run the chunks of ``jobs``, each in a fresh process (so results are reproducible)."""
    chunks = [jobs[i:i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # workers fork from a server with this module loaded
    results: list[list[dict[str, Any]]] = [[] for _ in chunks]
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context,
                             max_tasks_per_child=1) as pool, \
            progress(total=len(jobs), desc="synthesising", unit="utt") as bar:
        futures = {pool.submit(_synthesize_chunk, str(root), chunk): i for i, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(len(chunks[futures[future]]))
    return [summary for chunk in results for summary in chunk]


def synthesize_dataset(out: str | Path, sentences: Sequence[str] | Mapping[str, Sequence[str]],
                       config: SpeechSynthConfig | None = None, command: str = "") -> dict[str, Any]:
    """Synthesise a speech set into ``out`` (layout in the module docstring) and return its manifest.

    ``sentences``: one list, cut into disjoint per-split parts, or a ``{split: sentences}`` mapping.
    The folder appears complete or not at all; the same config and sentences give the same files
    (whatever ``config.workers``). It starts worker processes: in a script, call it under
    ``if __name__ == "__main__":``.
    """
    config = config or SpeechSynthConfig()
    if not isinstance(sentences, Mapping):
        sentences = _partition(sentences, config, "sentences")
    by_split = _partition(make_voices(config), config, "speakers")  # shuffled: small sets mix accents
    jobs = _plan(by_split, sentences, config)
    workers = config.workers or os.cpu_count() or 1
    with atomic_path(out) as tmp:
        tmp.mkdir()
        summaries = _run(tmp, jobs, workers)
        if not summaries:
            raise RuntimeError("eSpeak NG produced no speech for any sentence")
        manifest = _manifest(config, by_split, summaries, command)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _manifest(config: SpeechSynthConfig, voices: dict[str, list[Voice]], summaries: list[dict[str, Any]],
              command: str) -> dict[str, Any]:
    phones: Counter = sum((s["phones"] for s in summaries), Counter())
    splits = {}
    for split in SPLITS:
        mine = [s for s in summaries if s["split"] == split]
        splits[split] = {"utterances": len(mine), "hours": round(sum(s["seconds"] for s in mine) / 3600, 4),
                         "speakers": sorted(v.name for v in voices[split])}
    return {
        "format": "dynacomp synthetic speech 1",
        "synthesizer": f"eSpeak NG {summaries[0]['synthesizer']}",
        "sample_rate": SAMPLE_RATE,
        "hours": round(sum(s["seconds"] for s in summaries) / 3600, 4),
        "utterances": len(summaries),
        "splits": splits,
        "voices": [dataclasses.asdict(v) | {"split": split}
                   for split, vs in voices.items() for v in sorted(vs, key=lambda v: v.name)],
        "phones": dict(sorted(phones.items())),
        "silence_label": SILENCE,
        "alignment": "exact: eSpeak NG phone events, stop closures and word gaps given to the next phone",
        "config": to_dict(config),
        "command": command,
    }
