"""dynacomp.errors: each kind of exception gets its exit status and one line that names the
problem; the command line's end of it is tests/test_cli_errors.py."""

import errno

import pytest
import torch

from dynacomp.cli import main
from dynacomp.errors import Failure, Interrupted, UnknownName, UsageError, describe


@pytest.mark.parametrize("err, status, line", [
    (UsageError("--steps must be >= 0"), 2, "error: --steps must be >= 0"),
    (ValueError("window must be >= 1, got 0"), 2, "error: window must be >= 1, got 0"),
    (UnknownName("unknown corpus 'x'"), 2, "error: unknown corpus 'x'"),   # not KeyError's quoted form
    (Failure("no checkpoint under run/checkpoints: train first"), 1, "error: no checkpoint under run/checkpoints"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "data.txt"), 1, "error: data.txt does not exist"),
    (FileNotFoundError("run/run.json not found: make one"), 1, "error: run/run.json not found: make one"),
    (PermissionError(errno.EACCES, "Permission denied", "data.txt"), 1, "error: permission denied for data.txt"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs"), 1, "error: runs is a folder where a file"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 1, "error: a file is not UTF-8 text"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 1, "error: out of memory (CUDA out of memory)"),
    (MemoryError(), 1, "error: out of memory"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (Interrupted("training stopped at step 3 of 10; run/checkpoints/step_2 is kept"), 130,
     "interrupted: training stopped at step 3"),
    (ZeroDivisionError("division by zero"), 1, "error: ZeroDivisionError: division by zero (unexpected: rerun with"),
])
def test_describe(err, status, line):
    got_status, got_line = describe(err)
    assert got_status == status and got_line.startswith(line) and "\n" not in got_line


def test_a_message_over_several_lines_comes_out_on_one():
    assert describe(Failure("first\n  second\n"))[1] == "error: first second"


def test_unknown_name_is_still_a_key_error():
    with pytest.raises(KeyError):
        raise UnknownName("unknown corpus 'x'")


def test_out_of_memory_names_the_fix():
    assert "smaller batch size" in describe(MemoryError())[1]


def test_main_maps_what_a_command_raises(monkeypatch, capsys):
    from dynacomp.models import cli as models_cli

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(models_cli, "_list", oom)
    monkeypatch.delenv("DYNACOMP_DEBUG", raising=False)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and err.count("\n") == 1
    assert main(["--debug", "models", "list"]) == 1
    assert "Traceback" in capsys.readouterr().err
