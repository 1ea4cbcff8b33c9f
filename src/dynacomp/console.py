"""What commands print: results as JSON or as text, and progress bars on long work."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

from dynacomp.io import json_text

T = TypeVar("T")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def emit(result: Any, as_json: bool, render: Callable[[Any], str] | None = None) -> None:
    """Print ``result``: JSON when asked (for scripts), else ``render(result)`` or a key: value list."""
    if as_json:
        print(json_text(result))
    elif render is not None:
        print(render(result))
    else:
        print(format_mapping(result))


def format_mapping(mapping: dict, indent: int = 0) -> str:
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_mapping(value, indent + 2))
        else:
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)


def bars_enabled() -> bool:
    """Progress bars are for a person: on when stderr is a terminal or ``DYNACOMP_PROGRESS=1``."""
    return sys.stderr.isatty() or os.environ.get("DYNACOMP_PROGRESS") == "1"


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, so stdout stays clean for ``--json``; silent when stderr is no terminal
    unless ``DYNACOMP_PROGRESS=1``."""
    return tqdm(iterable, file=sys.stderr, disable=kwargs.pop("disable", not bars_enabled()), dynamic_ncols=True,
                **kwargs)
