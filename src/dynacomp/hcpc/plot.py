"""A waveform and its spectrogram with reference and predicted boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynacomp.io import figure


def plot_segmentation(audio: np.ndarray, sample_rate: int, predicted: Sequence[float], path: str | Path,
                      reference: Sequence[float] = (), title: str = "") -> Path:
    """Draw ``audio (L,)`` (waveform above, spectrogram below) with ``reference`` boundaries (green,
    dashed, top halves) and ``predicted`` ones (red, bottom halves), both in seconds. Writes
    ``path`` (png, svg, pdf)."""
    audio = np.asarray(audio, dtype=float)
    seconds = len(audio) / sample_rate
    with figure(path, nrows=2, figsize=(max(6.0, 3.0 * seconds), 4.5), sharex=True) as (_, (wave, spec)):
        wave.plot(np.arange(len(audio)) / sample_rate, audio, lw=0.4, color="#34495e")
        spec.specgram(audio, NFFT=400, noverlap=240, Fs=sample_rate, cmap="magma")
        spec.set_ylim(0, min(8000, sample_rate / 2))
        for ax in (wave, spec):
            for t in reference:
                ax.axvline(t, ymin=0.5, ymax=1.0, color="#27ae60", ls="--", lw=1.0)
            for t in predicted:
                ax.axvline(t, ymin=0.0, ymax=0.5, color="#e74c3c", lw=1.0)
        wave.set_xlim(0, seconds)
        wave.set_yticks([])
        spec.set_xlabel("seconds")
        spec.set_ylabel("Hz")
        wave.set_title(f"{title}  reference (green, top, {len(reference)})  predicted (red, bottom, {len(predicted)})".strip(),
                       fontsize=9, loc="left")
    return Path(path)
