"""Fake speech corpora on disk, for tests of loaders and of what trains on them."""

from pathlib import Path

import numpy as np
import soundfile

from dynacomp.data.speech import write_segments


def tone(n: int, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.sin(np.arange(n) * 2 * np.pi * 200 / rate)).astype(np.float32)


def fake_timit(root: Path, train_speakers: int, test_speakers: int) -> Path:
    """A TIMIT layout: one 0.8 s sentence per speaker, phones of 80 ms labelled a/b/c."""
    for split, count in (("TRAIN", train_speakers), ("TEST", test_speakers)):
        for i in range(count):
            folder = root / split / "DR1" / f"{split[:2]}{i:02d}"
            folder.mkdir(parents=True)
            soundfile.write(folder / "SX1.WAV", tone(12800) * (1 + i % 3), 16000)
            phones = [(s, s + 1280, "abc"[(s // 1280 + i) % 3]) for s in range(0, 12800, 1280)]
            write_segments(folder / "SX1.PHN", phones)
    return root
