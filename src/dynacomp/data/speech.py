"""Speech with phone alignments: the ``Utterance`` type every loader returns, and reading audio,
segment files and synthetic sets.

Every loader (synthetic sets, and LibriSpeech, TIMIT, Buckeye in ``speech_corpora``) returns
``Utterance`` objects, so downstream models see one type. Layout of a synthetic set (written by
``dynacomp.data.speech_synthesis``)::

    DIR/manifest.json                          voices, splits, hours, phone inventory, config
    DIR/{train,validation,test}/{speaker}/{utt}.wav   16-bit PCM mono, 16 kHz
                                         .../{utt}.phn   TIMIT style: ``start end phone`` in samples
                                         .../{utt}.wrd   ``start end word(s)`` in samples
                                         .../{utt}.txt   the sentence read
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
SILENCE = "sil"
SPLITS = ("train", "validation", "test")


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
