"""Synthetic speech with exact phone boundaries: ``synthesize_dataset`` and ``dynacomp data speech``.

No aligned recorded speech can be had offline, so this makes some: eSpeak NG
(``dynacomp.data.espeak``) reports, for every phone it speaks, the sample where it starts, so the
labels are exact rather than forced-aligned. Several accents, voice variants, rates and pitches
give many "speakers"; the splits are by speaker, so test voices are never heard in training. The
layout written is the one ``dynacomp.data.speech.load_dataset`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import random
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from scipy.signal import resample_poly

from dynacomp.config import field, to_dict
from dynacomp.console import progress
from dynacomp.data.espeak import ENGLISH_VOICES, VARIANTS, ESpeak, segments_from_events
from dynacomp.data.speech import SAMPLE_RATE, SILENCE, SPLITS, write_segments
from dynacomp.io import atomic_path

# ----------------------------------------------------------------------------- speakers and sentences

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


# ----------------------------------------------------------------------------- one utterance

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
