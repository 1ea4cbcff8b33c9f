"""The recipe end to end on a tiny fake speech set: train, resume, load, evaluate, segment, CLI."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from dynacomp.cli import main
from dynacomp.data.speech import Utterance, write_segments
from dynacomp.hcpc import eval as hcpc_eval
from dynacomp.hcpc.eval import EvalConfig, evaluate
from dynacomp.hcpc.model import HCPCConfig
from dynacomp.hcpc.recipe import RunConfig, load_run, train_run
from dynacomp.hcpc.segment import read_any_audio
from dynacomp.metrics.segmentation import peak_boundaries
from dynacomp.train import TrainConfig
from tests.data.fakes import fake_timit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = HCPCConfig(dim=16, negatives=4, codebook_size=8, vq_bypass_steps=1, vq_reestimate_every=1, predict_steps=3)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two speakers per split, two 0.8 s utterances each, phones of 80 ms labelled a/b/c."""
    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "validation", "test"):
        speakers = [f"{split}{i}" for i in range(2)]
        splits[split] = {"speakers": speakers}
        for speaker in speakers:
            folder = root / split / speaker
            folder.mkdir(parents=True)
            for u in range(2):
                soundfile.write(folder / f"{speaker}_{u}.wav", rng.normal(0, 0.1, 12800).astype(np.float32), 16000)
                write_segments(folder / f"{speaker}_{u}.phn", [(s, s + 1280, "abc"[(s // 1280 + u) % 3])
                                                               for s in range(0, 12800, 1280)])
    (root / "manifest.json").write_text(json.dumps({"sample_rate": 16000, "splits": splits}))
    return root


def test_train_resume_evaluate_segment(speech, tmp_path):
    run = RunConfig(data=speech, window=4800, batch_size=2)
    out = tmp_path / "run"
    first = train_run(TINY, run, TrainConfig(steps=2, checkpoint_every=1, log_every=1, warmup_steps=0), out)
    again = train_run(TINY, run, TrainConfig(steps=3, checkpoint_every=1, log_every=1, warmup_steps=0), out)
    assert (first.step, again.step) == (2, 3)
    loaded = load_run(out)
    assert loaded.record["model"] == TINY and loaded.model.config == TINY and loaded.checkpoint.name == "step_000003"
    result = evaluate(loaded.model, speech, EvalConfig(probe_steps=5, probe_utterances=2))
    assert set(result["segmentation"]) == {"periodic", "peaks", "model", "model_peaks"}
    assert set(result["segmentation"]["model"]["strict"]) >= {"precision", "recall", "f1", "r_value"}
    assert set(result["abx"]) == {"low", "high"} and set(result["probe"]) == {"low", "high"}
    assert result["segmentation"]["periodic"]["period_frames"] == pytest.approx(8.0)

    boundaries = tmp_path / "b.json"
    assert main(["hcpc", "segment", "--run", str(out), "--audio", str(speech / "test"), "--out", str(boundaries),
                 "--plot", str(tmp_path / "seg.png")]) == 0
    written = json.loads(boundaries.read_text())
    assert len(written) == 4 and all(r["num_frames"] == 80 for r in written.values())
    assert (tmp_path / "seg.png").stat().st_size > 0

    # The logit-peak readout: every local maximum at prominence 0, as peak_boundaries finds them.
    assert main(["hcpc", "segment", "--run", str(out), "--audio", str(speech / "test"), "--out", str(boundaries),
                 "--prominence", "0"]) == 0
    peaks = json.loads(boundaries.read_text())
    name = sorted(peaks)[0]
    logits = loaded.model.segment(read_any_audio(speech / "test" / name)).logits[:-1].numpy()
    assert peaks[name]["frames"] == peak_boundaries(logits, 0.0) and peaks[name]["frames"]


def test_trains_and_evaluates_on_a_recorded_corpus(tmp_path, capsys):
    """``--data timit:ROOT``: the loaders of recorded corpora feed training and evaluation (the
    run's own data by default, kept with absolute paths)."""
    data = f"timit:{fake_timit(tmp_path / 'TIMIT', train_speakers=11, test_speakers=2)}"
    out = tmp_path / "run"
    assert main(["hcpc", "train", "--data", data, "--out", str(out), "--dim", "16", "--negatives", "4",
                 "--codebook-size", "8", "--predict-steps", "3", "--window", "4800", "--batch-size", "2",
                 "--steps", "2", "--warmup-steps", "0"]) == 0
    capsys.readouterr()
    assert main(["hcpc", "eval", "--run", str(out), "--probe-steps", "5", "--probe-utterances", "2",
                 "--plot", str(tmp_path / "eval.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == data and result["utterances"] == 2 and set(result["probe"]) == {"low", "high"}
    assert (tmp_path / "eval.png").stat().st_size > 0


def test_peak_prominence_comes_from_validation_and_tolerance_from_seconds(monkeypatch):
    """Two references (frames 10 and 20); the curves peak at 9 (boundary 10) and 20 (boundary 21,
    one frame late, inside 20 ms) and have one spurious peak, of prominence 0.05 on validation and
    0.10 on test. Validation's best prominence, 0.06, keeps test's spurious peak; chosen on test
    it would be 0.11, with a perfect score."""
    def curve(spurious: float) -> np.ndarray:
        c = np.zeros(49)
        c[[9, 20, 35]] = 1.0, 1.0, spurious
        return c

    curves = {"validation": curve(0.05), "test": curve(0.10)}
    monkeypatch.setattr(hcpc_eval, "segment_all", lambda model, utterances, desc="":
                        [SimpleNamespace(z=curves[u.id]) for u in utterances])
    monkeypatch.setattr(hcpc_eval, "dissimilarity", lambda z: z)
    phones = [(0, 1600, "a"), (1600, 3200, "b"), (3200, 8000, "c")]
    validation, test = ([Utterance(name, "s", Path(name), 16000, phones)] for name in ("validation", "test"))
    model = SimpleNamespace(config=SimpleNamespace(hierarchical=False))
    results, _ = hcpc_eval.segmentation_scores(model, validation, test, period=10.0, tolerance=0.02)
    for mode in ("strict", "lenient"):
        peaks = results["peaks"][mode]
        assert peaks["prominence"] == 0.06
        assert peaks["recall"] == 1.0 and peaks["precision"] == pytest.approx(2 / 3)


def test_eval_refuses_to_score_the_split_that_chooses_prominences():
    with pytest.raises(ValueError, match="validation split chooses"):
        EvalConfig(split="validation")
