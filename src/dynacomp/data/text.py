"""The embedded text corpora, split and cached: ``load_split``, ``load_documents``, ``corpus_info``.

Splits are made once per corpus at document level (``split_documents``) and cached as plain
UTF-8 files in ``cache_dir('text', name)``. The test split is for evaluation only. The corpora and
how each is built: ``dynacomp.data.text_corpora``; text8-style cleaning:
``dynacomp.data.text_cleaning``; text8, enwik8 and wiki40b: ``dynacomp.data.text_benchmarks``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dynacomp.data.text_corpora import CORPORA, DEFAULT_CORPUS, CorpusSpec, Document
from dynacomp.errors import UnknownName
from dynacomp.io import atomic_path, cache_dir

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DOCUMENT_SEPARATOR = "\n\n"
CACHE_FORMAT = 1  # bump when building or splitting changes, so stale caches are rebuilt


# ---------------------------------------------------------------------------------------------
# Splits

def _rank(doc_id: str, seed: int) -> str:
    """A stable pseudo-random order: sha256 is the same in every run and Python version."""
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def split_documents(docs: Sequence[Document], fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                    seed: int = 0) -> dict[str, list[Document]]:
    """Whole documents into train / validation / test, by their ids' hashes; none left empty.

    Documents are visited in hash order; test, then validation, take each one that brings them
    closer to their share of characters, so even a corpus of a few dozen works gets held-out splits
    near the asked size. Each split keeps the input order.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    if len({d.id for d in docs}) != len(docs):
        raise ValueError("document ids must be unique")
    if len(docs) < 3:
        raise ValueError(f"{len(docs)} document(s) cannot fill three splits")
    total = sum(len(d.text) for d in docs)
    remaining = sorted(docs, key=lambda d: _rank(d.id, seed))
    held: dict[str, set[str]] = {}
    for split, fraction in (("test", fractions[2]), ("validation", fractions[1])):
        target, size, taken = fraction * total, 0, set()
        for doc in remaining:
            if size >= target:
                break
            if abs(size + len(doc.text) - target) < target - size:
                taken.add(doc.id)
                size += len(doc.text)
        if not taken:  # every document is too big for the share: take the smallest
            taken.add(min(remaining, key=lambda d: len(d.text)).id)
        held[split] = taken
        remaining = [d for d in remaining if d.id not in taken]
    if not remaining:
        raise ValueError("no document left for train: too few documents for these fractions")
    validation, test = held["validation"], held["test"]
    return {"train": [d for d in docs if d.id not in validation and d.id not in test],
            "validation": [d for d in docs if d.id in validation],
            "test": [d for d in docs if d.id in test]}


# ---------------------------------------------------------------------------------------------
# The cache: plain UTF-8 files, written atomically

def _spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise UnknownName(f"unknown corpus {name!r}; known: {', '.join(CORPORA)} (`dynacomp data text list`)")
    return CORPORA[name]


def corpus_dir(name: str) -> Path:
    return cache_dir("text") / name


def _read(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as f:  # newline="": exact text, char counts hold
        return f.read()


def _meta(name: str) -> dict | None:
    path = corpus_dir(name) / "meta.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
    return meta if meta.get("format") == CACHE_FORMAT else None


def is_prepared(name: str) -> bool:
    """Whether the corpus is in the cache (so loading it needs no network)."""
    return _meta(_spec(name).name) is not None


def prepare(name: str, force: bool = False) -> Path:
    """Build the corpus and its splits into the cache unless there already; returns its folder.

    Files: ``documents.txt`` (all documents, separated by a blank line), ``train.txt``,
    ``validation.txt``, ``test.txt`` and ``meta.json`` (ids, lengths, split membership).
    """
    spec = _spec(name)
    folder = corpus_dir(name)
    if not force and is_prepared(name):
        return folder
    docs = [Document(d.id, d.text.replace("\r\n", "\n").replace("\r", "\n").strip()) for d in spec.build()]
    docs = [d for d in docs if d.text]
    splits = split_documents(docs)
    meta = {
        "format": CACHE_FORMAT, "name": spec.name, "language": spec.language, "source": spec.source,
        "documents": [[d.id, len(d.text)] for d in docs],
        "splits": {split: [d.id for d in part] for split, part in splits.items()},
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "documents.txt").write_text(DOCUMENT_SEPARATOR.join(d.text for d in docs), encoding="utf-8")
        for split, part in splits.items():
            (tmp / f"{split}.txt").write_text(DOCUMENT_SEPARATOR.join(d.text for d in part), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return folder


def load_documents(name: str = DEFAULT_CORPUS) -> list[Document]:
    """The corpus's documents; fetched and cached on first use."""
    folder = prepare(name)
    meta = _meta(name)
    text = _read(folder / "documents.txt")
    docs, start = [], 0
    for doc_id, length in meta["documents"]:
        docs.append(Document(doc_id, text[start:start + length]))
        start += length + len(DOCUMENT_SEPARATOR)
    return docs


def load_split(name: str, split: Split) -> str:
    """The documents of one split, joined by a blank line. ``test`` is for evaluation only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return _read(prepare(name) / f"{split}.txt")


def corpus_info(name: str) -> dict:
    """Sizes, characters and splits of a corpus (prepares it if needed)."""
    spec = _spec(name)
    folder = prepare(name)
    meta = _meta(name)
    text = _read(folder / "documents.txt")
    lengths = dict(meta["documents"])
    chars = sum(lengths.values())
    splits = {}
    for split in SPLITS:
        ids = meta["splits"][split]
        split_chars = sum(lengths[i] for i in ids)
        splits[split] = {"documents": len(ids), "chars": split_chars,
                         "bytes": (folder / f"{split}.txt").stat().st_size,
                         "share": round(split_chars / chars, 4)}
    return {
        "name": spec.name, "language": spec.language, "description": spec.description,
        "source": spec.source, "license": spec.license, "cache": str(folder),
        "documents": len(lengths), "chars": chars,
        "bytes": len(text.encode()) - len(DOCUMENT_SEPARATOR) * (len(lengths) - 1),
        "distinct_chars": len(set(text)),
        "splits": splits,
        "validation_documents": meta["splits"]["validation"],
        "test_documents": meta["splits"]["test"],
    }
