"""dynacomp.data.text: document-level splits, the cache, the `dynacomp data text` CLI, and the real
corpora read from what `dynacomp data text fetch` cached (skipped when absent, failing under CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random

import pytest

from dynacomp.data import text, text_cli
from dynacomp.data.text import split_documents
from dynacomp.data.text_corpora import CorpusSpec, Document
from dynacomp.errors import UsageError

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


# --- cache, loading and the CLI on a corpus made here --------------------------------------------

@pytest.fixture
def tiny(cache, monkeypatch):
    docs = [Document(f"doc{i:02d}", f"Text of document {i}.\r\nSecond line " * (i + 1)) for i in range(40)]
    calls = []

    def build():
        calls.append(1)
        return docs

    monkeypatch.setitem(text.CORPORA, "tiny", CorpusSpec("tiny", "en", "test corpus", "made here", "none", build))
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

    monkeypatch.setitem(text.CORPORA, "broken", CorpusSpec("broken", "en", "", "", "", build))
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
    with pytest.raises(UsageError, match="unknown corpus"):
        _cli("fetch", "klingon")


def test_cli_fetch_skips_apt_corpora_only_when_not_named(cache, monkeypatch, capsys):
    def no_apt():
        raise RuntimeError("apt-get is not available here")

    monkeypatch.setattr(text, "CORPORA", {"fi": CorpusSpec("fi", "fi", "", "", "", no_apt, needs_apt=True)})
    assert _cli("fetch", "--json") == 0
    assert json.loads(capsys.readouterr().out)["fi"]["status"] == "skipped"
    assert _cli("fetch", "fi", "--json") == 1
    assert json.loads(capsys.readouterr().out)["fi"]["status"] == "failed"


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
    ("finnish", 900_000, None), ("vietnamese", 900_000, None),
    ("austen", 3_900_000, 269), ("bible", 4_800_000, 81), ("manpages", 5_500_000, None)])
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


def test_real_austen_is_unwrapped_chapters():
    _require_cached("austen")
    docs = {d.id: d.text for d in text.load_documents("austen")}
    assert docs["prideprejudice/01"].startswith("It is a truth universally acknowledged, that a single man in "
                                                "possession of a good fortune, must be in want of a wife.\n")
    assert len(docs) == 269 and not any("_" in t or "CHAPTER" in t for t in docs.values())


def test_real_bible_is_books_without_footnotes():
    _require_cached("bible")
    docs = {d.id: d.text for d in text.load_documents("bible")}
    assert docs["Gen"].startswith("In the beginning, God created the heavens and the earth. The earth was formless")
    assert "Elohim" not in docs["Gen"][:500] and not any("<" in t for t in docs.values())
    assert text.corpus_info("bible")["test_documents"] == ["Exod", "Dan", "Jonah", "Bar"]


def test_real_manpages_are_rendered_text():
    _require_cached("manpages")
    docs = {d.id: d.text for d in text.load_documents("manpages")}
    assert docs["man7/signal.7"].startswith("NAME\nsignal - overview of signals\n\nDESCRIPTION\nLinux supports")
    assert "man2/open.2" in docs and "man7/ascii.7" not in docs and "man7/iso-8859-1.7" not in docs
    assert not any("─" * 20 in t for t in docs.values())   # no table rule stretched over the line length
