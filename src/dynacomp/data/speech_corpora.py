"""Loaders for recorded speech with phone alignments: LibriSpeech, TIMIT, Buckeye.

None of these corpora can be downloaded here; each loader reads a copy you already have, in its
usual layout, and returns ``Utterance`` objects (``dynacomp.data.speech``) with segments in samples.
Labels are the corpus's own; only an empty label (an untranscribed stretch) becomes ``"sil"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import soundfile

from dynacomp.data.speech import SILENCE, Utterance, load_dataset, read_segments

LIBRISPEECH_RATE = 16000
TIMIT_RATE = 16000
CPC_FRAME = 160  # samples per label in the CPC phone labels (10 ms at 16 kHz)


# ----------------------------------------------------------------------------- TextGrid

_TOKEN = re.compile(r'"((?:[^"]|"")*)"|\[\s*\d*\s*\]|(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)')


def read_textgrid(path: str | Path) -> dict[str, list[tuple[float, float, str]]]:
    """The interval tiers of a Praat TextGrid (long or short text format): ``{name: [(start, end,
    label), ...]}`` in seconds. Point tiers are skipped."""
    raw = Path(path).read_bytes()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    # Keys (``xmin =``) and item indices (``[1]``) carry no information: keep strings and numbers.
    tokens = [m.group(1).replace('""', '"') if m.group(1) is not None else float(m.group(2))
              for m in _TOKEN.finditer(text) if m.group(1) is not None or m.group(2) is not None]
    if len(tokens) < 5 or not str(tokens[0]).startswith("ooTextFile") or tokens[1] != "TextGrid":
        raise ValueError(f"{path} is not a text TextGrid")
    pos, tiers = 5, {}   # after the header strings, xmin, xmax and the number of tiers
    for _ in range(int(tokens[4])):
        kind, name, count = tokens[pos], tokens[pos + 1], int(tokens[pos + 4])
        pos += 5
        if kind == "IntervalTier":
            tiers[name] = [(tokens[i], tokens[i + 1], tokens[i + 2].strip())
                           for i in range(pos, pos + 3 * count, 3)]
            pos += 3 * count
        else:  # TextTier: (time, mark) pairs
            pos += 2 * count
    return tiers


def _tier(tiers: dict[str, list], kind: str) -> list[tuple[float, float, str]]:
    """The tier named ``kind`` (MFA 2 prefixes the speaker: ``"84 - phones"``); empty if none."""
    return next((v for k, v in tiers.items() if k.lower().endswith(kind)), [])


def _to_samples(intervals: Iterable[tuple[float, float, str]], rate: int, keep_empty: bool
                ) -> list[tuple[int, int, str]]:
    segments = []
    for start, end, label in intervals:
        s, e = round(start * rate), round(end * rate)
        if e > s and (label or keep_empty):
            segments.append((s, e, label or SILENCE))
    return segments


# ----------------------------------------------------------------------------- LibriSpeech

def _frame_label_segments(labels: list[str], frame: int) -> list[tuple[int, int, str]]:
    """Runs of equal per-frame labels as segments (two equal phones in a row become one)."""
    segments: list[tuple[int, int, str]] = []
    for i, label in enumerate(labels):
        if segments and segments[-1][2] == label:
            segments[-1] = (segments[-1][0], (i + 1) * frame, label)
        else:
            segments.append((i * frame, (i + 1) * frame, label))
    return segments


def _librispeech_alignments(alignments: Path) -> dict[str, tuple[list, list]]:
    """``{utt_id: (phones, words)}`` from a folder of TextGrids or a CPC frame-label file."""
    if alignments.is_file():
        table = {}
        for line in alignments.read_text().splitlines():
            parts = line.split()
            if len(parts) > 1:
                table[parts[0]] = (_frame_label_segments(parts[1:], CPC_FRAME), [])
        return table
    table = {}
    for path in alignments.rglob("*.TextGrid"):
        tiers = read_textgrid(path)
        table[path.stem] = (_to_samples(_tier(tiers, "phones"), LIBRISPEECH_RATE, keep_empty=True),
                            _to_samples(_tier(tiers, "words"), LIBRISPEECH_RATE, keep_empty=False))
    return table


def load_librispeech(root: str | Path, subset: str, alignments: str | Path) -> list[Utterance]:
    """LibriSpeech ``subset`` (``dev-clean``, ``train-clean-100``, ...) with forced phone alignments.

    ``root`` holds ``{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{n}.flac`` and the chapter's
    ``.trans.txt`` (the ``LibriSpeech`` folder of the OpenSLR archives). ``alignments`` is either

    - a folder of Montreal Forced Aligner TextGrids named ``{utterance}.TextGrid``, in any
      sub-folders, with ``words`` and ``phones`` tiers: the widely used "LibriSpeech Alignments"
      (Lugosch et al. 2019, ``{subset}/{speaker}/{chapter}/``; ARPAbet phones with stress digits),
      or your own MFA output; or
    - the CPC phone-label file ``converted_aligned_phones.txt`` (van den Oord et al. 2018, used by
      CPC and hCPC: ``utterance label label ...``, one of 41 class numbers per 10 ms frame).

    Utterances without an alignment (MFA skips a few) are left out.
    """
    folder = Path(root) / subset
    if not folder.is_dir():
        raise FileNotFoundError(f"no LibriSpeech subset {folder}: root is the folder holding "
                                f"{subset}/SPEAKER/CHAPTER/*.flac")
    aligned = _librispeech_alignments(Path(alignments))
    utterances = []
    for transcript in sorted(folder.glob("*/*/*.trans.txt")):
        for line in transcript.read_text().splitlines():
            utt_id, _, text = line.partition(" ")
            if utt_id in aligned:
                phones, words = aligned[utt_id]
                utterances.append(Utterance(
                    id=utt_id, speaker=utt_id.split("-")[0], audio_path=transcript.parent / f"{utt_id}.flac",
                    sample_rate=LIBRISPEECH_RATE, phones=phones, words=words, text=text.strip()))
    if not utterances:
        raise FileNotFoundError(f"none of the utterances in {folder} has an alignment in {alignments}")
    return utterances


# ----------------------------------------------------------------------------- TIMIT

def _child(folder: Path, name: str) -> Path | None:
    """``folder/name`` matched without regard to case (TIMIT copies differ)."""
    if not folder.is_dir():
        return None
    return next((p for p in folder.iterdir() if p.name.lower() == name.lower()), None)


def load_timit(root: str | Path, split: str = "test", include_sa: bool = False) -> list[Utterance]:
    """TIMIT ``train`` or ``test``: ``{split}/DR*/{speaker}/{sentence}.{WAV,PHN,WRD,TXT}``.

    ``root`` is the folder holding ``TRAIN``/``TEST`` (either case, as on the LDC disc or in lower
    case). ``.WAV`` may be NIST SPHERE or RIFF (a ``.WAV.wav`` copy beside it is used first);
    ``.PHN``/``.WRD`` are ``start end label`` in samples at 16 kHz, labels the 61 TIMIT phones.
    The SA sentences, read by every speaker, are left out unless ``include_sa`` (common practice).
    """
    folder = _child(Path(root), split)
    if folder is None:
        raise FileNotFoundError(f"no {split.upper()} folder in {root}: "
                                f"root is the folder holding TRAIN and TEST")
    utterances = []
    for phn in sorted(p for p in folder.glob("*/*/*") if p.suffix.lower() == ".phn"):
        speaker, sentence = phn.parent.name, phn.stem
        if sentence.lower().startswith("sa") and not include_sa:
            continue
        audio = next((a for a in (phn.parent / f"{sentence}{ext}" for ext in
                                  (".WAV.wav", ".wav.wav", ".WAV", ".wav")) if a.exists()), None)
        if audio is None:
            continue
        wrd = _child(phn.parent, f"{sentence}.wrd")
        txt = _child(phn.parent, f"{sentence}.txt")
        utterances.append(Utterance(
            id=f"{speaker}_{sentence}", speaker=speaker, audio_path=audio, sample_rate=TIMIT_RATE,
            phones=read_segments(phn), words=read_segments(wrd) if wrd else [],
            text=txt.read_text().split(maxsplit=2)[-1].strip() if txt else ""))
    return utterances


# ----------------------------------------------------------------------------- Buckeye

def read_xlabel(path: str | Path, rate: int) -> list[tuple[int, int, str]]:
    """A Buckeye ``.phones``/``.words`` file: a header up to a ``#`` line, then ``time color label``
    lines where ``time`` (seconds) ends the segment that the previous line's time starts. For
    ``.words`` the label is the word, before the first ``;``."""
    lines = Path(path).read_text(errors="replace").splitlines()
    header_end = next((i for i, line in enumerate(lines) if line.strip() == "#"), None)
    if header_end is None:
        raise ValueError(f"{path} is not an xlabel file: no '#' line ends its header")
    segments, start = [], 0
    for line in lines[header_end + 1:]:
        parts = line.split(maxsplit=2)
        if not parts:
            continue
        end = round(float(parts[0]) * rate)
        label = parts[2].split(";")[0].strip() if len(parts) == 3 else ""
        if end > start:   # a few annotations step backwards in time: skip those
            segments.append((start, end, label or SILENCE))
            start = end
    return segments


def load_buckeye(root: str | Path, speakers: Iterable[str] | None = None) -> list[Utterance]:
    """Buckeye sessions, one ``Utterance`` per recording (about 10 minutes each).

    ``root`` holds, in any sub-folders (``s01/s0101a/``), the unzipped ``{session}.wav`` with its
    ``{session}.phones`` and ``{session}.words``; ``speakers`` (``s01``...) picks some. Labels
    include the non-speech markers (``SIL``, ``{B_TRANS}``, ``<VOCNOISE>``, ...).
    """
    wanted = set(speakers) if speakers is not None else None
    utterances = []
    for phones in sorted(Path(root).rglob("*.phones")):
        session, speaker = phones.stem, phones.stem[:3]
        wav, words = phones.with_suffix(".wav"), phones.with_suffix(".words")
        if (wanted is not None and speaker not in wanted) or not wav.exists():
            continue
        rate = soundfile.info(wav).samplerate
        utterances.append(Utterance(
            id=session, speaker=speaker, audio_path=wav, sample_rate=rate, phones=read_xlabel(phones, rate),
            words=[w for w in read_xlabel(words, rate) if w[2] != SILENCE] if words.exists() else []))
    return utterances


# ----------------------------------------------------------------------------- one entry point

CORPORA = {
    "timit": "timit:ROOT (train: TIMIT train less every 10th speaker, validation: those speakers, test: TIMIT test)",
    "buckeye": "buckeye:ROOT (speakers sorted: every 10th from the first is test, from the second validation, "
               "the rest train)",
    "librispeech": "librispeech:ROOT:ALIGNMENTS (train: train-clean-100, validation: dev-clean, test: test-clean)",
}


def _every_tenth_speaker(utterances: list[Utterance], offset: int) -> set[str]:
    return set(sorted({u.speaker for u in utterances})[offset::10])


def _corpus(data: str | Path) -> tuple[str, str] | None:
    """``(corpus, location)`` of a ``CORPUS:ROOT`` speech set; None for a synthetic set's folder."""
    name, _, location = str(data).partition(":")
    return (name, location) if name in CORPORA and location else None


def speech_set_id(data: str | Path) -> str:
    """``data`` as a run record keeps it, valid from any folder: a synthetic set's absolute
    folder, or ``CORPUS:ROOT[:ALIGNMENTS]`` with absolute paths."""
    corpus = _corpus(data)
    if corpus is None:
        return str(Path(data).resolve())
    name, location = corpus
    return ":".join([name, *(str(Path(part).resolve()) for part in location.split(":"))])


def load_speech(data: str | Path, split: str) -> list[Utterance]:
    """``split`` (``train``, ``validation`` or ``test``; speakers never shared between splits) of
    a speech set: a synthetic set folder (``dynacomp data speech``) or a recorded corpus named
    ``CORPUS:ROOT`` as ``CORPORA`` describes, e.g. ``timit:/data/TIMIT``."""
    corpus = _corpus(data)
    if corpus is None:
        return load_dataset(data, split)
    name, location = corpus
    if split not in ("train", "validation", "test"):
        raise ValueError(f"no split {split!r} in {data}: train, validation or test")
    if name == "timit":
        if split == "test":
            return load_timit(location, "test")
        train = load_timit(location, "train")
        held = _every_tenth_speaker(train, 0)
        return [u for u in train if (u.speaker in held) == (split == "validation")]
    if name == "buckeye":
        sessions = load_buckeye(location)
        test, validation = _every_tenth_speaker(sessions, 0), _every_tenth_speaker(sessions, 1)
        held = {"test": test, "validation": validation}.get(split)
        return [u for u in sessions if (u.speaker in held if held is not None else u.speaker not in test | validation)]
    root, _, alignments = location.partition(":")
    if not alignments:
        raise ValueError(f"{data}: LibriSpeech needs its phone alignments, {CORPORA['librispeech']}")
    subset = {"train": "train-clean-100", "validation": "dev-clean", "test": "test-clean"}[split]
    return load_librispeech(root, subset, alignments)
