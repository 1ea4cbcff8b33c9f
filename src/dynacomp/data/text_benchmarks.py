"""Text benchmarks the user downloads: ``load_text8``, ``load_enwik8`` (checksummed, 90M/5M/5M)
and ``load_wiki40b`` (Hugging Face parquet files)."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dynacomp.data.text import DOCUMENT_SEPARATOR, SPLITS


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
