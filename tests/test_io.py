"""dynacomp.io: figures are written whole or not at all; JSON is strict."""

import json

import pytest

from dynacomp.errors import Failure
from dynacomp.io import atomic_path, figure, read_text, write_json


def test_figure_writes_the_format_its_suffix_names(tmp_path):
    for name, magic in (("plot.png", b"\x89PNG"), ("plot.svg", b"<?xml"), ("plot.pdf", b"%PDF")):
        with figure(tmp_path / name, figsize=(2, 2)) as (_, ax):
            ax.plot([0, 1], [1, 0])
        assert (tmp_path / name).read_bytes().startswith(magic)


def test_a_failed_figure_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), figure(path) as (_, ax):
        ax.plot([0, 1])
        raise RuntimeError("drawing failed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_json_is_strict_undefined_numbers_are_null(tmp_path):
    write_json(tmp_path / "x.json", {"error": float("nan"), "os": [float("inf"), 1.5], "path": tmp_path})
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text) == {"error": None, "os": [None, 1.5], "path": str(tmp_path)}
    assert "NaN" not in text and "Infinity" not in text


def test_an_atomic_folder_may_hold_links_that_point_nowhere(tmp_path):
    with atomic_path(tmp_path / "package") as folder:
        folder.mkdir()
        (folder / "doc").symlink_to("elsewhere")   # as in unpacked .debs whose doc folder links to another's
    assert (tmp_path / "package" / "doc").is_symlink()


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, r"data file .*missing\.txt does not exist: check the path"),
    ("folder", "a folder", r"data file .*folder is a folder: pass a file"),
    ("latin1.txt", "café".encode("latin-1"), r"data file .*latin1\.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"),
    ("blank.txt", b" \n\t\n", r"data file .*blank\.txt is empty"),
])
def test_read_text_names_the_file_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "a folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(Failure, match=message):
        read_text(path, "data file")


def test_read_text_reads_utf8(tmp_path):
    (tmp_path / "t.txt").write_text("naïve\n", encoding="utf-8")
    assert read_text(tmp_path / "t.txt") == "naïve\n"
