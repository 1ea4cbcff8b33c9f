"""Files and folders: the cache location, text files the user names (read with a clear error), and
writes (JSON, text, figures) that are never seen half-done."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynacomp.errors import Failure


def cache_dir(*parts: str) -> Path:
    """``$DYNACOMP_CACHE`` (default ``~/.cache/dynacomp``), joined with ``parts`` and created."""
    root = Path(os.environ.get("DYNACOMP_CACHE", Path.home() / ".cache" / "dynacomp")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and folders alike: whatever the block writes at the yielded path replaces
    ``path`` in one rename, so a reader sees the old version or the complete new one. The new
    data reaches the disk before the rename, and the rename before the call returns, so a power
    loss cannot leave a renamed but empty file either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        for written in (target.rglob("*") if target.is_dir() else [target]):
            if not written.is_symlink():   # its target may lie elsewhere, or nowhere (a .deb's doc folder links)
                _fsync(written)
        if target.is_dir() and path.exists():
            # A folder cannot be renamed onto a non-empty folder: move the old one aside first.
            old = tmp / ".old"
            os.replace(path, old)
        os.replace(target, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str = "text file") -> str:
    """The UTF-8 text of a file the user named, or a ``Failure`` that names the file and the fix
    (missing, unreadable, a folder, not UTF-8, empty)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise Failure(f"{what} {path} does not exist: check the path") from err
    except IsADirectoryError as err:
        raise Failure(f"{what} {path} is a folder: pass a file") from err
    except OSError as err:
        raise Failure(f"cannot read {what} {path} ({err.strerror or err}): check its permissions") from err
    except UnicodeDecodeError as err:
        raise Failure(f"{what} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                      "convert it, e.g. `iconv -f latin1 -t utf-8`") from err
    if not text.strip():
        raise Failure(f"{what} {path} is empty: pass a file with some text")
    return text


def json_text(obj: Any) -> str:
    """``obj`` as indented, strict JSON: NaN and infinities (undefined scores), which ``json`` would
    write as the non-standard ``NaN`` / ``Infinity``, become ``null``; other objects their ``str``."""
    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite(v) for key, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), indent=2, default=str, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (``json_text``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def figure(path: str | os.PathLike, dpi: int = 120, figsize: tuple[float, float] | None = None,
           **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A figure and its axes (``Figure.subplots(**subplots)``, constrained layout), written to
    ``path`` (format from its suffix: png, svg, pdf) atomically when the block succeeds. Built
    without pyplot, so it needs no display and leaves the caller's matplotlib backend alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(**subplots)
    yield fig, axes
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
