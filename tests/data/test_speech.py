"""dynacomp.data.speech's Utterance helpers, and the LibriSpeech / TIMIT / Buckeye loaders, on small fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from dynacomp.data.speech import SILENCE, Utterance, boundaries_in_frames, frame_labels, read_audio
from dynacomp.data.speech_corpora import (
    load_buckeye,
    load_librispeech,
    load_speech,
    load_timit,
    read_textgrid,
    speech_set_id,
)
from tests.data.fakes import fake_timit, tone


def test_frame_helpers():
    utt = Utterance("u", "s", "x.wav", 16000, [(0, 800, "a"), (800, 1650, "b"), (1650, 3200, "c")])
    assert boundaries_in_frames(utt) == [5, 10]
    assert frame_labels(utt) == ["a"] * 5 + ["b"] * 5 + ["c"] * 10
    assert frame_labels(utt, num_frames=22)[-2:] == ["c", "c"]


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
