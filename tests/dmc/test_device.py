"""``--device``: every command that runs a model takes it, and without CUDA ``--device cuda`` is one
line on stderr before anything loads or is written, not a traceback."""

import pytest
import torch

from dynacomp.cli import main

COMMANDS = [["dmc", "bench"], ["dmc", "eval"], ["dmc", "passkey"], ["dmc", "retrofit", "--out", "run"],
            ["dmc", "calibrate", "--model", "run/model", "--target-cr", "2", "--out", "calibrated"], ["serve"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_cuda_without_cuda_is_one_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--device", "cuda"]) == 1
    assert capsys.readouterr().err == "error: CUDA is not available on this machine: pass --device cpu\n"
    assert not any(tmp_path.iterdir())
