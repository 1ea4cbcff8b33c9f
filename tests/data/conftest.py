import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty private cache, so nothing touches the user's."""
    monkeypatch.setenv("DYNACOMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
