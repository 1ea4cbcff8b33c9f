"""Log-mel frames of a speech set, with the phone under each frame.

Frame ``k`` is a 25 ms Hann window centred on sample ``160 k + 80``: exactly where
``dynacomp.data.speech.frame_labels`` reads its phone, so features and labels line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from dynacomp.console import progress
from dynacomp.data.speech import frame_labels, read_audio
from dynacomp.data.speech_corpora import load_speech

SAMPLE_RATE = 16000
HOP = 160       # 10 ms
WINDOW = 400    # 25 ms


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist: ``(n_mels, n_fft // 2 + 1)``."""
    to_mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731
    mels = torch.linspace(0, to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    edges = 700 * (10 ** (mels / 2595) - 1)                        # (n_mels + 2,) Hz
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return rising.minimum(falling).clamp_min(0).float()


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """``(T // 160, n_mels)`` log mel energies of 16 kHz ``audio (T,)``."""
    frames = audio.shape[0] // HOP
    left = WINDOW // 2 - HOP // 2                       # so frame k is centred on 160 k + 80
    padded = torch.nn.functional.pad(audio, (left, WINDOW))
    spec = torch.stft(padded, n_fft=WINDOW, hop_length=HOP, window=torch.hann_window(WINDOW),
                      center=False, return_complex=True)[:, :frames]
    power = torch.view_as_real(spec).pow(2).sum(-1)                 # (F, frames)
    return (mel_filterbank(n_mels, WINDOW) @ power).clamp_min(1e-10).log().T


@dataclass
class SpeechFrames:
    """One split as frames: ``features[i] (T_i, n_mels)`` and the phone of each frame."""

    features: list[torch.Tensor]
    phones: list[list[str]]
    ids: list[str]

    def normalized(self, mean: torch.Tensor, std: torch.Tensor) -> SpeechFrames:
        return SpeechFrames([(f - mean) / std for f in self.features], self.phones, self.ids)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mel mean and standard deviation over all frames (for normalising every split)."""
        frames = torch.cat(self.features)
        return frames.mean(0), frames.std(0).clamp_min(1e-5)


def load_frames(data: str | Path, split: str, n_mels: int = 80) -> SpeechFrames:
    """Log-mels and frame phones of every utterance of ``split`` of a speech set (``load_speech``)."""
    utterances = load_speech(data, split)
    if not utterances:
        raise ValueError(f"no utterances in the {split} split of {data}")
    features, phones = [], []
    for utt in progress(utterances, desc=f"log-mels {split}", unit="utt"):
        if utt.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{utt.audio_path} is at {utt.sample_rate} Hz; the VQ-VAE features expect 16 kHz")
        feats = log_mel(read_audio(utt), n_mels)
        features.append(feats)
        phones.append(frame_labels(utt, HOP, feats.shape[0]))
    return SpeechFrames(features, phones, [u.id for u in utterances])
