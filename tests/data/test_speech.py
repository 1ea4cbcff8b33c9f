"""Synthetic speech (eSpeak NG) and the LibriSpeech / TIMIT / Buckeye loaders, on small fixtures."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile

from dynacomp.data import speech
from dynacomp.data.speech import (
    SILENCE,
    SpeechSynthConfig,
    Utterance,
    boundaries_in_frames,
    frame_labels,
    load_dataset,
    read_audio,
    segments_from_events,
    synthesize_dataset,
)
from dynacomp.data.speech_corpora import (
    load_buckeye,
    load_librispeech,
    load_speech,
    load_timit,
    read_textgrid,
    speech_set_id,
)
from tests.data.fakes import fake_timit, tone

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
    return [u for split in speech.SPLITS for u in load_dataset(root, split)]


# ----------------------------------------------------------------------------- synthesis

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
    speakers = {split: set(manifest["splits"][split]["speakers"]) for split in speech.SPLITS}
    assert all(speakers.values())
    assert not speakers["test"] & speakers["train"] and not speakers["validation"] & speakers["train"]
    for split in speech.SPLITS:
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


def test_missing_espeakng_loader_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        speech.ESpeak()


def test_segments_from_events_gives_closures_to_stops():
    """A stop's event comes at its burst after a silent closure: the closure joins the stop; pauses
    become one ``sil``; trailing silence is cut; words span their phones."""
    audio = np.ones(1000, np.int16)
    audio[300:400] = 0    # closure before the burst at 400
    audio[600:700] = 0    # a pause
    audio[950:] = 0       # trailing silence
    events = [(1, 0, 1), (7, 0, "ˈæ"), (7, 400, "t"), (7, 600, ""), (7, 700, ""), (1, 700, 5),
              (7, 700, "ɪ"), (7, 950, ""), (7, 1000, "")]
    end, phones, words = segments_from_events(audio, events, "at, it")
    assert end == 950
    assert phones == [(0, 300, "æ"), (300, 600, "t"), (600, 700, SILENCE), (700, 950, "ɪ")]
    assert words == [(0, 600, "at"), (700, 950, "it")]


def test_frame_helpers():
    utt = Utterance("u", "s", "x.wav", 16000, [(0, 800, "a"), (800, 1650, "b"), (1650, 3200, "c")])
    assert boundaries_in_frames(utt) == [5, 10]
    assert frame_labels(utt) == ["a"] * 5 + ["b"] * 5 + ["c"] * 10
    assert frame_labels(utt, num_frames=22)[-2:] == ["c", "c"]


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


# ----------------------------------------------------------------------------- corpus loaders

def test_timit_layout(tmp_path):
    for split, speaker, sentence in [("TEST", "FAKS0", "SI943"), ("TEST", "FAKS0", "SA1"),
                                     ("TRAIN", "MCPM0", "SX114")]:
        folder = tmp_path / "TIMIT" / split / "DR1" / speaker
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{sentence}.WAV", tone(8000), 16000, format="NIST", subtype="PCM_16")
        (folder / f"{sentence}.PHN").write_text("0 2000 h#\n2000 4200 sh\n4200 8000 iy\n")
        (folder / f"{sentence}.WRD").write_text("2000 8000 she\n")
        (folder / f"{sentence}.TXT").write_text("0 8000 She.\n")
    test = load_timit(tmp_path / "TIMIT", "test")
    assert [u.id for u in test] == ["FAKS0_SI943"]
    utt = test[0]
    assert utt.phones == [(0, 2000, "h#"), (2000, 4200, "sh"), (4200, 8000, "iy")]
    assert utt.words == [(2000, 8000, "she")] and utt.text == "She." and utt.speaker == "FAKS0"
    assert np.allclose(read_audio(utt).numpy(), tone(8000), atol=1e-4)
    assert len(load_timit(tmp_path / "TIMIT", "test", include_sa=True)) == 2
    assert [u.id for u in load_timit(tmp_path / "TIMIT", "train")] == ["MCPM0_SX114"]


BUCKEYE_PHONES = """signal s0101a
type 0
color 121
comment created using WavEd
font -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*
separator ;
nfields 1
#
    0.100000  122 {B_TRANS}
    0.250000  122 SIL
    0.300000  122 hh
    0.420000  122 ay
    0.500000  121 SIL
"""
BUCKEYE_WORDS = """signal s0101a
nfields 1
#
    0.100000  121 {B_TRANS}; U; U; null
    0.250000  121 <SIL>; U; U; null
    0.420000  121 hi; h ay; hh ay; UH
    0.500000  121 <SIL>; U; U; null
"""


def test_buckeye_layout(tmp_path):
    folder = tmp_path / "buckeye" / "s01" / "s0101a"
    folder.mkdir(parents=True)
    soundfile.write(folder / "s0101a.wav", tone(8000), 16000)
    (folder / "s0101a.phones").write_text(BUCKEYE_PHONES)
    (folder / "s0101a.words").write_text(BUCKEYE_WORDS)
    [utt] = load_buckeye(tmp_path / "buckeye")
    assert (utt.id, utt.speaker, utt.sample_rate) == ("s0101a", "s01", 16000)
    assert utt.phones == [(0, 1600, "{B_TRANS}"), (1600, 4000, "SIL"), (4000, 4800, "hh"),
                          (4800, 6720, "ay"), (6720, 8000, "SIL")]
    assert (4000, 6720, "hi") in utt.words
    assert load_buckeye(tmp_path / "buckeye", speakers=["s02"]) == []


LONG_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.5
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.5
            text = "go"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.5
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.25
            text = "G"
        intervals [3]:
            xmin = 0.25
            xmax = 0.5
            text = "OW1"
'''
SHORT_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

0
0.5
<exists>
2
"IntervalTier"
"phones"
0
0.5
2
0
0.2
"D"
0.2
0.5
"UW1"
"TextTier"
"events"
0
0.5
1
0.3
"click"
'''


def test_librispeech_layout_with_mfa_textgrids_and_cpc_labels(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for n in range(3):
        soundfile.write(chapter / f"84-121123-000{n}.flac", tone(8000), 16000)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO\n84-121123-0001 DO\n84-121123-0002 NOT ALIGNED\n")
    aligned = tmp_path / "alignments" / "dev-clean" / "84" / "121123"
    aligned.mkdir(parents=True)
    (aligned / "84-121123-0000.TextGrid").write_text(LONG_TEXTGRID)
    (aligned / "84-121123-0001.TextGrid").write_text(SHORT_TEXTGRID, encoding="utf-16")

    assert list(read_textgrid(aligned / "84-121123-0001.TextGrid")) == ["phones"]
    utts = load_librispeech(tmp_path / "LibriSpeech", "dev-clean", tmp_path / "alignments")
    assert [u.id for u in utts] == ["84-121123-0000", "84-121123-0001"]
    assert utts[0].phones == [(0, 1600, SILENCE), (1600, 4000, "G"), (4000, 8000, "OW1")]
    assert utts[0].words == [(1600, 8000, "go")] and utts[0].text == "GO" and utts[0].speaker == "84"
    assert utts[1].phones == [(0, 3200, "D"), (3200, 8000, "UW1")]
    assert read_audio(utts[1]).shape == (8000,)

    cpc = tmp_path / "converted_aligned_phones.txt"
    cpc.write_text("84-121123-0002 0 0 0 5 5 7\n")
    [utt] = load_librispeech(tmp_path / "LibriSpeech", "dev-clean", cpc)
    assert utt.phones == [(0, 480, "0"), (480, 800, "5"), (800, 960, "7")]


def test_load_speech_splits_recorded_corpora_by_speaker(tmp_path):
    timit = fake_timit(tmp_path / "TIMIT", train_speakers=12, test_speakers=2)
    splits = {s: {u.speaker for u in load_speech(f"timit:{timit}", s)} for s in ("train", "validation", "test")}
    assert splits["validation"] == {"TR00", "TR10"} and len(splits["train"]) == 10 and splits["test"] == {"TE00", "TE01"}
    for session in ("s0101a", "s0102a", "s0201a", "s1101a", "s1201a", "s2101a"):
        folder = tmp_path / "buckeye" / session[:3]
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{session}.wav", tone(8000), 16000)
        (folder / f"{session}.phones").write_text(BUCKEYE_PHONES)
    speakers = {s: sorted({u.speaker for u in load_speech(f"buckeye:{tmp_path / 'buckeye'}", s)})
                for s in ("train", "validation", "test")}
    assert speakers == {"test": ["s01"], "validation": ["s02"], "train": ["s11", "s12", "s21"]}
    assert len(load_speech(f"buckeye:{tmp_path / 'buckeye'}", "test")) == 2     # both sessions of s01
    with pytest.raises(ValueError, match="needs its phone alignments"):
        load_speech(f"librispeech:{tmp_path}", "train")
    with pytest.raises(FileNotFoundError, match="no synthetic speech set"):
        load_speech(tmp_path / "nothing", "train")


def test_speech_set_id_is_valid_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert speech_set_id("speech") == str(tmp_path / "speech")
    assert speech_set_id("timit:data/TIMIT") == f"timit:{tmp_path / 'data/TIMIT'}"
    assert speech_set_id("librispeech:LS:aligned") == f"librispeech:{tmp_path / 'LS'}:{tmp_path / 'aligned'}"
