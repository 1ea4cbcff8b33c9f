"""Boundaries for a folder of audio: ``dynacomp hcpc segment``."""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import soundfile
import torch
from scipy.signal import resample_poly

from dynacomp.config import field
from dynacomp.console import progress
from dynacomp.data.speech import SAMPLE_RATE
from dynacomp.hcpc.model import FRAME, HCPC
from dynacomp.io import write_json

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass
class SegmentConfig:
    prominence: float | None = field(None, help="boundaries at peaks of the predictor's logits with this prominence "
                                     "(a fraction of each file's range; `hcpc eval` reports the best one on validation "
                                     "under model_peaks) instead of its thresholded decisions")


def read_any_audio(path: Path) -> torch.Tensor:
    """Mono float32 ``(L,)`` at 16 kHz (resampled when the file has another rate)."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype("float32")
    return torch.from_numpy(audio)


def segment_folder(model: HCPC, folder: Path, out: Path, prominence: float | None = None) -> dict[str, Any]:
    """Segment every audio file under ``folder`` (recursively); write ``out`` (JSON):
    ``{relative path: {"frames": [...], "seconds": [...], "num_frames": T}}``, boundaries being
    the frames that start a new segment (10 ms each).

    Boundaries are the predictor's decisions, or with ``prominence`` the peaks of its logits (the
    readout ``hcpc eval`` scores as ``model_peaks`` and whose prominence it reports): a policy
    that is not yet decisive ranks frames well before any of them crosses the threshold."""
    if not model.config.hierarchical:
        raise ValueError("this run has no boundary predictor (trained with --no-hierarchical)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    result = {}
    for path in progress(files, desc="segment"):
        audio = read_any_audio(path)
        if len(audio) < FRAME:   # under one 10 ms frame: nothing to segment
            frames, num_frames = [], 0
        else:
            segmentation = model.segment(audio, prominence)
            frames, num_frames = segmentation.boundaries, len(segmentation.z)
        result[str(path.relative_to(folder))] = {"frames": frames, "seconds": [f * FRAME / SAMPLE_RATE for f in frames],
                                                 "num_frames": num_frames}
    write_json(out, result)
    return result
