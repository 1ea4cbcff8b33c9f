"""dynacomp.data.text_benchmarks: text8, enwik8 and wiki40b on fixtures made here."""

from __future__ import annotations

import hashlib
import random
import sys
import zipfile

import pytest

from dynacomp.data import text_benchmarks
from dynacomp.data.text_benchmarks import Benchmark, Checksum, ChecksumError, load_enwik8, load_text8, load_wiki40b


@pytest.fixture
def fake_text8(tmp_path):
    """A 2,000-byte text8 look-alike, zipped and not, with a Benchmark holding their checksums."""
    data = bytes(random.Random(0).choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(2000))
    raw = tmp_path / "text8"
    raw.write_bytes(data)
    zipped = tmp_path / "text8.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(raw, "text8")
    zip_bytes = zipped.read_bytes()
    bench = Benchmark("text8", "http://example.invalid/text8.zip",
                      zipped=Checksum(len(zip_bytes), "sha256", hashlib.sha256(zip_bytes).hexdigest()),
                      unzipped=Checksum(len(data), "md5", hashlib.md5(data).hexdigest()))
    return data, raw, zipped, bench


def test_text8_standard_split_from_zip_file_or_folder(fake_text8, tmp_path):
    data, raw, zipped, bench = fake_text8
    for path in (zipped, raw, tmp_path):
        splits = load_text8(path, bench)
        assert [len(splits[s]) for s in ("train", "validation", "test")] == [1800, 100, 100]
        assert "".join(splits.values()).encode() == data


def test_enwik8_gives_bytes(fake_text8):
    data, raw, zipped, bench = fake_text8
    splits = load_enwik8(raw, Benchmark("enwik8", bench.url, bench.zipped, bench.unzipped))
    assert splits["test"] == data[-100:] and isinstance(splits["train"], bytes)


def test_truncated_or_corrupt_files_are_refused(fake_text8, tmp_path):
    data, raw, zipped, bench = fake_text8
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(zipped.read_bytes()[:-50])
    with pytest.raises(ChecksumError, match="truncated or not text8.zip; download it again"):
        load_text8(truncated, bench)
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(data[:1000] + b"#" + data[1001:])
    with pytest.raises(ChecksumError, match="corrupt: md5"):
        load_text8(corrupt, bench)
    with pytest.raises(ChecksumError, match="100,000,000"):  # the real checksums by default
        load_text8(raw)
    with pytest.raises(FileNotFoundError, match="download http://mattmahoney.net/dc/enwik8.zip"):
        load_enwik8(tmp_path / "nowhere")


def test_published_checksums():
    text8, enwik8 = text_benchmarks.TEXT8, text_benchmarks.ENWIK8
    assert (text8.zipped.size, text8.unzipped.size) == (31_344_016, 100_000_000)
    assert (enwik8.zipped.size, enwik8.unzipped.size) == (36_445_475, 100_000_000)
    assert enwik8.zipped.digest.startswith("547994d9") and text8.zipped.digest.startswith("a6640522")


WIKI40B_ARTICLE = ("\n_START_ARTICLE_\nHelsinki\n_START_SECTION_\nHistoria\n_START_PARAGRAPH_\n"
                   "Helsinki perustettiin 1550._NEWLINE_Se on pääkaupunki.\n_START_PARAGRAPH_\nToinen kappale.")


def test_wiki40b_markers_become_plain_lines():
    assert text_benchmarks.wiki40b_to_text(WIKI40B_ARTICLE) == \
        "Helsinki\nHistoria\nHelsinki perustettiin 1550.\nSe on pääkaupunki.\nToinen kappale."


def test_wiki40b_without_pyarrow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(RuntimeError, match="pip install pyarrow"):
        load_wiki40b(tmp_path, "fi")


def test_wiki40b_reads_parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")
    import pyarrow.parquet as pq

    folder = tmp_path / "fi"
    folder.mkdir()
    for split, n in (("train", 3), ("validation", 1), ("test", 1)):
        table = pa.table({"wikidata_id": [f"Q{i}" for i in range(n)], "text": [WIKI40B_ARTICLE] * n})
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    plain = text_benchmarks.wiki40b_to_text(WIKI40B_ARTICLE)
    splits = load_wiki40b(tmp_path, "fi")
    assert splits["train"] == "\n\n".join([plain] * 3) and splits["test"] == plain
    assert load_wiki40b(folder, "fi", max_chars=10)["train"] == plain[:10]
    with pytest.raises(FileNotFoundError, match="google/wiki40b"):
        load_wiki40b(tmp_path, "vi")
