import math

import pytest
import sentencepiece as spm
import torch

from dynacomp.dtp.data import CharData, build_vocab, train_unigram, unigram_targets
from dynacomp.dtp.eval import eval_windows, evaluate
from tests.dtp.tiny import random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = " ".join(["the civil aviation authority", "a civil servant", "the aviation of the state"] * 60)


def test_unigram_targets_close_pieces_and_words():
    model = train_unigram(TEXT, 40)
    targets = unigram_targets(TEXT, model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    words = TEXT.split(" ")
    pieces_of = {w: [p.replace("\u2581", "") for p in sp.encode(w, out_type=str)] for w in set(words)}
    assert any(len([p for p in pieces if p]) > 1 for pieces in pieces_of.values())
    assert targets.sum() == sum(len([p for p in pieces_of[w] if p]) for w in words)
    start = 0
    for word in words[:8]:  # the space after each word closes its last piece
        end = start + len(word)
        assert targets[end if end < len(TEXT) else end - 1] == 1
        pieces = [p for p in pieces_of[word] if p]
        inner = [start + sum(len(p) for p in pieces[:i + 1]) - 1 for i in range(len(pieces) - 1)]
        assert all(targets[i] == 1 for i in inner)
        assert targets[start:end].sum() == len(inner)
        start = end + 1
    assert targets[-1] == 1


def test_vocabulary_is_by_frequency_and_round_trips():
    vocab = build_vocab({"train": "aab b", "test": "c"})
    assert vocab == "ab c"
    data = CharData(vocab, "en", {})
    assert data.decode(data.encode("cab ab")) == "cab ab"
    assert data.whitespace_ids == (vocab.index(" "),)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        data.encode("abz")


@pytest.mark.parametrize("n,window,stride", [(10, 4, 1), (100, 16, 4), (37, 16, 5), (5, 16, 4), (16, 16, 16)])
def test_eval_windows_score_each_prediction_once(n, window, stride):
    scored = []
    for start, first in eval_windows(n, window, stride):
        size = min(window, n)
        assert start + size <= n
        scored.extend(range(start + first, start + size))
        assert first == 0 or size - first <= stride
    assert scored == list(range(n))


def test_evaluate_one_window_is_the_plain_cross_entropy():
    model = tiny_model("fixed").eval()
    ids = random_ids(1, 41, seed=8)[0]
    result = evaluate(model, ids, window=40, stride=10)
    with torch.no_grad():
        logits = model(ids[None, :-1]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits, ids[1:]).item() / math.log(2)
    assert result["bpc"] == pytest.approx(expected, rel=1e-5)
    assert result["chars"] == 40 and result["shortening_factor"] == pytest.approx(40 / 13)
    assert evaluate(tiny_model("none"), ids, 40, 10)["shortening_factor"] == 1.0
    short = evaluate(model, ids[:21], window=512, stride=128)      # shorter than the stride: one window
    assert short["chars"] == 20


def test_strided_evaluation_is_the_loop_over_windows():
    """205 predictions, windows of 40 every 10: starts 0..160 then 165 (aligned to the end); the
    first window scores all 40, the others the predictions no window scored before."""
    model = tiny_model("fixed").eval()
    ids = random_ids(1, 206, seed=9)[0]
    nll = 0.0
    with torch.no_grad():
        for start, first in [(0, 0)] + [(s, 30) for s in range(10, 161, 10)] + [(165, 35)]:
            logits = model(ids[None, start:start + 40]).logits[0]
            nll += torch.nn.functional.cross_entropy(logits[first:], ids[start + first + 1:start + 41],
                                                     reduction="sum").item()
    strided = evaluate(model, ids, window=40, stride=10, batch_size=3)
    assert strided["chars"] == 205 and strided["bpc"] == pytest.approx(nll / 205 / math.log(2), rel=1e-5)


def test_embedded_corpora_are_cleaned_per_language():
    from dynacomp.data.text_cleaning import ALPHABETS
    from dynacomp.dtp.data import load_data

    assert set(load_data("english").vocab) == set(ALPHABETS["en"] + " ")
    assert set(load_data("hebrew").vocab) <= set(ALPHABETS["he"] + " ")


def test_benchmark_loaders_and_unknown_names(monkeypatch):
    from dynacomp.dtp import data

    splits = {"train": "ab", "validation": "b", "test": "a"}
    monkeypatch.setattr(data, "load_text8", lambda path: splits)
    monkeypatch.setattr(data, "load_enwik8", lambda path: {k: v.encode() + b"\xe9" for k, v in splits.items()})
    monkeypatch.setattr(data, "load_wiki40b", lambda folder, language: {k: "Ä 1\n" + v for k, v in splits.items()})
    assert data.load_texts("text8:/x") == (splits, "en")
    assert data.load_texts("enwik8:/x")[0]["test"] == "a\u00e9"
    assert data.load_texts("wiki40b:fi:/x") == ({k: "ä yksi\n" + v for k, v in splits.items()}, "fi")
    with pytest.raises(ValueError, match="unknown data"):
        data.load_texts("klingon")
