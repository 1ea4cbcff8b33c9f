"""dynacomp.config: one default per field; flags over a config file over defaults; typos refused."""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from dynacomp.config import add_config_args, config_from_args, config_from_dict, field
from dynacomp.errors import UsageError


@dataclass
class Model:
    width: int = field(8, help="units")
    kind: Literal["a", "b"] = field("a")


@dataclass
class Optim:
    lr: float = field(1e-3)
    out: Path | None = field(None)


def parse(argv, tmp_path, file=None):
    parser = argparse.ArgumentParser()
    add_config_args(parser, Model)
    add_config_args(parser, Optim)
    if file is not None:
        (tmp_path / "c.json").write_text(json.dumps(file))
        argv = [*argv, "--config", str(tmp_path / "c.json")]
    args = parser.parse_args(argv)
    return config_from_args(Model, args), config_from_args(Optim, args)


def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    assert parse([], tmp_path) == (Model(), Optim())
    model, optim = parse(["--width", "32"], tmp_path, {"width": 16, "kind": "b", "lr": 1, "out": "x"})
    assert model == Model(32, "b") and optim == Optim(1.0, Path("x"))
    assert isinstance(optim.lr, float)


def test_a_file_key_no_config_class_knows_is_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown option.*stpes"):
        parse([], tmp_path, {"width": 16, "stpes": 7})


@pytest.mark.parametrize("values", [{"width": "16"}, {"width": 1.5}, {"width": True}, {"kind": "c"}])
def test_values_of_the_wrong_type_are_refused(values):
    with pytest.raises(ValueError, match="Model"):
        config_from_dict(Model, values)
    assert config_from_dict(Optim, {"out": None}).out is None
