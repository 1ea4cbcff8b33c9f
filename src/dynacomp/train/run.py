"""A finished run read back: the JSON record a recipe wrote beside its checkpoints, and its model.

Each system's recipe writes one record (model config, run options, whatever else it needs to
rebuild the model) into its run folder and reads it back with ``load_trained_run``, saying how to
build its model from the record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch import nn

from dynacomp.config import config_from_dict
from dynacomp.train.checkpoint import load_weights

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass
class LoadedRun(Generic[ModelT]):
    model: ModelT            # the latest checkpoint's weights, in eval mode, on the CPU
    record: dict[str, Any]   # the run's record, its config sections as their dataclasses
    checkpoint: Path         # the checkpoint folder the weights came from


def read_run_record(out_dir: str | os.PathLike, filename: str, make_it: str) -> dict:
    """The JSON record a recipe wrote beside its checkpoints (model config, run options, ...).

    ``make_it`` is the command that creates such a run, for the error when the record is missing.
    """
    path = Path(out_dir) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not such a run folder (make one with `{make_it}`)")
    return json.loads(path.read_text())


def load_trained_run(path: str | os.PathLike, filename: str, make_it: str, configs: Mapping[str, type],
             build: Callable[[dict[str, Any]], ModelT]) -> LoadedRun[ModelT]:
    """Read the record ``filename`` of the run folder ``path``, turn each section named in
    ``configs`` into its config class (sections that are None stay None), build the model with
    ``build(record)`` and load the run's latest checkpoint into it.

    ``make_it`` is the command that creates such a run, for the error when the record is missing.
    """
    record = read_run_record(path, filename, make_it)
    for key, config_cls in configs.items():
        if record[key] is not None:
            record[key] = config_from_dict(config_cls, record[key])
    model = build(record)
    checkpoint = load_weights(model, path)
    return LoadedRun(model.eval(), record, checkpoint)
