"""The recipe end to end on a tiny fake speech set: train, resume, load, evaluate, segment, CLI."""

import json

import numpy as np
import pytest
import soundfile

from dynacomp.cli import main
from dynacomp.data.speech import write_segments
from dynacomp.hcpc.eval import EvalConfig, evaluate
from dynacomp.hcpc.model import HCPCConfig
from dynacomp.hcpc.recipe import RunConfig, load_run, train_run
from dynacomp.hcpc.segment import read_any_audio
from dynacomp.metrics.segmentation import peak_boundaries
from dynacomp.train import TrainConfig

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
    assert loaded.config == TINY and loaded.checkpoint.name == "step_000003"
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
