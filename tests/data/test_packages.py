"""dynacomp.data.packages: registry fetches, faked (no network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dynacomp.data import packages


def _fake_run(returncode: int = 0, writes: str | None = None):
    def run(command, cwd=None, capture_output=True, text=True):
        if writes:
            Path(command[command.index("-d") + 1], writes).write_bytes(b"archive")
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: No matching distribution")
    return run


def test_fetch_pypi_downloads_once(cache, monkeypatch):
    monkeypatch.setattr(packages.subprocess, "run", _fake_run(writes="demo-1.0.tar.gz"))
    path = packages.fetch_pypi("demo", "1.0")
    assert path == cache / "packages/pypi/demo-1.0/demo-1.0.tar.gz" and path.read_bytes() == b"archive"
    monkeypatch.setattr(packages.subprocess, "run", None)  # a second call must not run pip
    assert packages.fetch_pypi("demo", "1.0") == path


def test_fetch_pypi_failure_is_clear_and_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(packages.subprocess, "run", _fake_run(returncode=1))
    with pytest.raises(RuntimeError, match="No matching distribution(.|\n)*pip download --no-deps demo==1.0"):
        packages.fetch_pypi("demo", "1.0")
    assert list((cache / "packages/pypi").iterdir()) == []


def test_fetch_debian_without_apt_says_what_to_install(cache, monkeypatch):
    monkeypatch.setattr(packages.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="libreoffice-help-fi is needed but `apt-get` is not available"):
        packages.fetch_debian("libreoffice-help-fi")


def test_fetch_debian_failure_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(packages.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(packages.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(packages.subprocess, "run", _fake_run(returncode=100))
    with pytest.raises(RuntimeError, match="sudo apt-get update"):
        packages.fetch_debian("libreoffice-help-fi")
    assert list((cache / "packages/debian").iterdir()) == []
