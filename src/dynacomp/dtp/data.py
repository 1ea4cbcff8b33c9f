"""Character data for DTP: corpora cleaned text8-style, a character vocabulary, Unigram targets.

Data names (``RunConfig.data``):

- ``english``, ``hebrew``, ``finnish``, ``vietnamese``: the embedded corpora
  (``dynacomp.data.text``), cleaned with ``clean_text8`` for their language;
- ``text8:PATH``: text8, split 90M / 5M / 5M (already clean);
- ``enwik8:PATH``: enwik8 as raw bytes (one character per byte, read as Latin-1);
- ``wiki40b:LANG:FOLDER``: wiki40b parquet files, cleaned text8-style keeping line breaks.

The vocabulary is every character of the three splits, most frequent first (as in the paper).
Unigram targets: a SentencePiece Unigram model trained on the training split; each word is
encoded on its own, and a target of 1 marks the last character of every piece, the whitespace
after a word closing its last piece (Nawrot et al. 2023, §3.1.2). Both are cached.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from dynacomp.data.text import SPLITS, load_split
from dynacomp.data.text_benchmarks import load_enwik8, load_text8, load_wiki40b
from dynacomp.data.text_cleaning import clean_text8
from dynacomp.data.text_corpora import CORPORA
from dynacomp.io import atomic_path, cache_dir

UNIGRAM_VOCAB = {"en": 10000, "vi": 10000, "fi": 200, "he": 200}  # the paper's sizes (§4.2)
WHITESPACE = " \n"


@dataclass
class CharData:
    vocab: str                          # the characters, in id order
    language: str                       # ISO 639-1 code ('' for enwik8), for cleaning prompts
    splits: dict[str, torch.Tensor]     # split -> (N,) int64 character ids

    def encode(self, text: str) -> torch.Tensor:
        """``(N,)`` ids of ``text`` (already cleaned); unknown characters raise."""
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the vocabulary; clean the text "
                             f"with clean_text8(text, {self.language!r}) first")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    @property
    def whitespace_ids(self) -> tuple[int, ...]:
        return tuple(self.vocab.index(c) for c in WHITESPACE if c in self.vocab)


def load_texts(name: str) -> tuple[dict[str, str], str]:
    """``({split: text}, language)`` for a data name (see the module docstring)."""
    kind, _, rest = name.partition(":")
    if name in CORPORA:
        language = CORPORA[name].language
        return {s: clean_text8(load_split(name, s), language) for s in SPLITS}, language
    if kind == "text8" and rest:
        return load_text8(rest), "en"
    if kind == "enwik8" and rest:
        return {s: data.decode("latin-1") for s, data in load_enwik8(rest).items()}, ""
    if kind == "wiki40b" and ":" in rest:
        language, folder = rest.split(":", 1)
        raw = load_wiki40b(folder, language)
        return {s: clean_text8(t, language, newlines=True) for s, t in raw.items()}, language
    raise ValueError(f"unknown data {name!r}: use one of {', '.join(CORPORA)}, text8:PATH, enwik8:PATH "
                     "or wiki40b:LANG:FOLDER")


def build_vocab(texts: dict[str, str]) -> str:
    counts = Counter()
    for text in texts.values():
        counts.update(text)
    return "".join(sorted(counts, key=lambda c: (-counts[c], c)))


@functools.cache
def load_data(name: str) -> CharData:
    """The character data of a data name (kept in memory for the process; treat as read-only)."""
    texts, language = load_texts(name)
    vocab = build_vocab(texts)
    index = np.full(max(map(ord, vocab)) + 1, -1, dtype=np.int64)
    index[[ord(c) for c in vocab]] = np.arange(len(vocab))
    splits = {}
    for split, text in texts.items():
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        splits[split] = torch.from_numpy(index[codes])
    return CharData(vocab, language, splits)


def _unigram_key(data: CharData, vocab_size: int) -> str:
    """The training text itself and the vocabulary size: cached targets never outlive a change of
    corpus or cleaning, and never serve another corpus of the same name."""
    digest = hashlib.sha256(f"{vocab_size}|{data.vocab}|".encode())
    digest.update(data.splits["train"].numpy().tobytes())
    return digest.hexdigest()[:16]


def train_unigram(text: str, vocab_size: int) -> bytes:
    """A SentencePiece Unigram model (serialised) of ``text``, with the paper's trainer settings."""
    import sentencepiece as spm

    words = text.split()
    lines = (" ".join(words[i:i + 100]) for i in range(0, len(words), 100))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, split_by_whitespace=True, split_digits=True, max_sentencepiece_length=16,
        normalization_rule_name="identity", hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return model.getvalue()


def unigram_targets(text: str, model: bytes) -> np.ndarray:
    """``(len(text),)`` uint8: 1 at the last character of each piece of each word; the whitespace
    after a word (where there is one) closes its last piece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    targets = np.zeros(len(text), dtype=np.uint8)
    ends: dict[str, list[int]] = {}
    for match in re.finditer(r"\S+", text):
        word = match.group()
        if word not in ends:
            pieces = [p.replace("\u2581", "") for p in sp.encode(word, out_type=str)]
            lengths = [len(p) for p in pieces if p]
            ends[word] = list(np.cumsum(lengths) - 1) if sum(lengths) == len(word) else [len(word) - 1]
        start = match.start()
        targets[[start + e for e in ends[word][:-1]]] = 1
        targets[match.end() if match.end() < len(text) else match.end() - 1] = 1
    return targets


def load_unigram_targets(data: CharData, vocab_size: int = 0) -> torch.Tensor:
    """Unigram targets ``(N,)`` uint8 for the training split of ``data``, cached; ``vocab_size`` 0:
    the paper's size for the language (10k English and Vietnamese, 200 Finnish and Hebrew)."""
    vocab_size = vocab_size or UNIGRAM_VOCAB.get(data.language, 10000)
    path = cache_dir("dtp", "unigram") / f"{_unigram_key(data, vocab_size)}.npy"
    if not path.exists():
        text = data.decode(data.splits["train"])
        model = train_unigram(text, vocab_size)
        with atomic_path(path.with_suffix(".model")) as tmp:
            tmp.write_bytes(model)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, unigram_targets(text, model))
    return torch.from_numpy(np.load(path))
