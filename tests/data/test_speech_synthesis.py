"""dynacomp.data.speech_synthesis: synthetic speech sets on a small fixture, and `dynacomp data speech`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from dynacomp.data.speech import SILENCE, SPLITS, load_dataset, read_audio
from dynacomp.data.speech_synthesis import SpeechSynthConfig, synthesize_dataset

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells are surely seashells.",
    "Peter Piper picked a peck of pickled peppers yesterday afternoon.",
    "A big black bug bit a big black bear, but the bear bit back.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Good morning, how are you today? I hope the weather stays fine.",
    "The museum opens at nine, closes at five, and is free on Sundays.",
    "Fresh bread and strong coffee make a quiet morning feel complete.",
    "Thirty thin thistles stood still beside the silent stream.",
    "Please put the heavy boxes on the top shelf of the kitchen cupboard.",
    "Every train to the coast was late because of the storm last night.",
    "Children were playing football in the park until it got dark.",
]
CONFIG = SpeechSynthConfig(hours=0.01, voices=("en-us", "en-gb-scotland", "en-029"), variants=("m3", "f2"),
                           seed=1, workers=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech") / "set"
    manifest = synthesize_dataset(root, SENTENCES, CONFIG)
    return root, manifest


def _all(root):
    return [u for split in SPLITS for u in load_dataset(root, split)]


def test_phone_segments_tile_the_audio(synthetic):
    root, manifest = synthetic
    utterances = _all(root)
    assert len(utterances) == manifest["utterances"] >= 3
    for utt in utterances:
        info = soundfile.info(utt.audio_path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert utt.phones[0][0] == 0 and utt.phones[-1][1] == info.frames
        assert all(a[1] == b[0] for a, b in zip(utt.phones, utt.phones[1:])), "segments are contiguous"
        assert all(s < e and label for s, e, label in utt.phones)
        assert utt.words and all(0 <= s < e <= info.frames for s, e, _ in utt.words)
        assert utt.text in SENTENCES
        assert read_audio(utt).shape == (info.frames,)


def _spectral_change(audio: np.ndarray, win: int = 320, hop: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Distance between the log spectra of the 20 ms just before and just after each point:
    ``(change, sample position)``, one every ``hop`` samples."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop] * np.hanning(win)
    logspec = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-3)
    k = win // hop
    change = np.linalg.norm(logspec[k:] - logspec[:-k], axis=1) / np.sqrt(logspec.shape[1])
    return change, np.arange(len(change)) * hop + win


def _peak_near(change, positions, points, tol):
    """Largest change within ``tol`` samples of each point (points too near the edges skipped)."""
    out = []
    for p in points:
        near = np.abs(positions - p) <= tol
        if near.any():
            out.append(change[near].max())
    return np.array(out)


def test_phone_boundaries_line_up_with_the_signal(synthetic):
    """Spectral change is larger at the labelled boundaries than inside phones, and peaks with no
    offset: labels shifted by a few tens of ms would line up worse."""
    root, _ = synthetic
    at_boundaries, at_midpoints = [], []
    shifts = np.arange(-480, 481, 40)   # -30 .. +30 ms
    by_shift = np.zeros(len(shifts))
    for utt in _all(root):
        change, positions = _spectral_change(read_audio(utt).numpy())
        bounds = [s for s, _, _ in utt.phones[1:]]
        middles = [(s + e) // 2 for s, e, label in utt.phones if e - s >= 640 and label != SILENCE]
        at_boundaries.append(_peak_near(change, positions, bounds, 160))
        at_midpoints.append(_peak_near(change, positions, middles, 160))
        for i, shift in enumerate(shifts):
            by_shift[i] += _peak_near(change, positions, [b + shift for b in bounds], 80).sum()
    b, m = np.concatenate(at_boundaries), np.concatenate(at_midpoints)
    auc = (b[:, None] > m[None, :]).mean()
    assert len(b) > 200 and len(m) > 50
    assert b.mean() > 1.3 * m.mean()
    assert auc > 0.75, f"boundary vs mid-phone spectral change AUC {auc:.3f}"
    assert abs(shifts[by_shift.argmax()]) <= 80, f"change peaks {shifts[by_shift.argmax()] / 16} ms off"
    assert by_shift[len(shifts) // 2] > 1.3 * max(by_shift[0], by_shift[-1])


def test_splits_are_by_speaker(synthetic):
    root, manifest = synthetic
    speakers = {split: set(manifest["splits"][split]["speakers"]) for split in SPLITS}
    assert all(speakers.values())
    assert not speakers["test"] & speakers["train"] and not speakers["validation"] & speakers["train"]
    for split in SPLITS:
        assert {u.speaker for u in load_dataset(root, split)} <= speakers[split]
    assert len(manifest["voices"]) == 6 and manifest["sample_rate"] == 16000 and manifest["phones"]


def test_same_config_same_files_whatever_the_workers(synthetic, tmp_path):
    root, _ = synthetic
    again = tmp_path / "again"
    synthesize_dataset(again, SENTENCES, SpeechSynthConfig(**{**vars(CONFIG), "workers": 1}))
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files == sorted(p.relative_to(again) for p in again.rglob("*")
                           if p.is_file() and p.name != "manifest.json")
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_a_failed_run_leaves_nothing(tmp_path):
    config = SpeechSynthConfig(hours=0.001, voices=("no-such-voice",), variants=("m1", "m2", "m3"), workers=1)
    with pytest.raises(ValueError, match="no voice"):
        synthesize_dataset(tmp_path / "set", SENTENCES, config)
    assert list(tmp_path.iterdir()) == []


def test_cli_synthesises_and_describes(tmp_path, capsys):
    from dynacomp.cli import main

    text = tmp_path / "text.txt"
    text.write_text(" ".join(SENTENCES))
    out = tmp_path / "cli-set"
    assert main(["data", "speech", "--hours", "0.003", "--out", str(out), "--text", str(text),
                 "--voices", "en-us", "en", "--variants", "m1", "f1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["utterances"] >= 3 and result["hours"] > 0
    assert main(["data", "speech-info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["command"].startswith("dynacomp data speech --out")
    assert "--hours 0.003" in manifest["command"]
    assert load_dataset(out, "test")
