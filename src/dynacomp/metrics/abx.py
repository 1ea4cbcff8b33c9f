"""ABX phone discriminability of frame features, within and across speaker, with ZeroSpeech item files.

An *item* is one phone token in context: ``file onset offset phone prev next speaker`` (times in
seconds), one per line of a ZeroSpeech ``.item`` file under the header
``#file onset offset #phone prev-phone next-phone speaker``. A triplet (A, B, X) has A and X of one
phone, B of another, all three in the same context (prev, next); the triplet is an error when X
is closer to B than to A (half an error on a tie). Within speaker: A, B and X share a speaker
(X != A). Across speaker: A and B share a speaker, X has another.

Distance: dynamic time warping over the frames of the two items with the angular distance
``arccos(cos) / pi`` per frame pair, the path cost divided by the sum of the two lengths. Error
rates are averaged as libri-light's evaluator (ZeroSpeech 2021) averages them: over the cells of
one speaker (of A and B) and ordered phone pair (their contexts and, across speaker, X's
speakers), then over speakers, then over phone pairs. Each (context, phone, speaker) group is
capped at ``max_per_group`` items (seeded sample) to bound the cost.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dynacomp.data.speech import SILENCE, Utterance
from dynacomp.io import write_text

HEADER = "#file onset offset #phone prev-phone next-phone speaker"


@dataclass(frozen=True)
class Item:
    file: str
    onset: float      # seconds
    offset: float     # seconds
    phone: str
    prev: str
    next: str
    speaker: str


def items_from_utterances(utterances: Iterable[Utterance], silence: str = SILENCE) -> list[Item]:
    """Every phone with a phone on each side, silence excluded as the centre; ``file`` is the id."""
    items = []
    for utt in utterances:
        phones = utt.phones
        for (_, _, prev), (start, end, phone), (_, _, nxt) in zip(phones, phones[1:], phones[2:]):
            if phone != silence and end > start:
                items.append(Item(utt.id, start / utt.sample_rate, end / utt.sample_rate, phone, prev, nxt,
                                  utt.speaker))
    return items


def write_item_file(path: str | Path, items: Iterable[Item]) -> Path:
    lines = [HEADER] + [f"{i.file} {i.onset:.4f} {i.offset:.4f} {i.phone} {i.prev} {i.next} {i.speaker}"
                        for i in items]
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def read_item_file(path: str | Path) -> list[Item]:
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 7:
            raise ValueError(f"{path}:{number}: an item line has 7 fields ({HEADER[1:]}), got {len(parts)}")
        items.append(Item(parts[0], float(parts[1]), float(parts[2]), *parts[3:]))
    return items


def item_frames(features: np.ndarray, item: Item, frame_rate: float) -> np.ndarray:
    """The frames of ``features (T, D)`` whose centres ``(k + 0.5) / frame_rate`` fall inside the
    item (at least the one nearest its middle): ``(n, D)``. An item past the features' end is an
    error (features of another file, or at another frame rate), not a repeat of the last frame."""
    if item.onset * frame_rate >= len(features):
        raise ValueError(f"item {item.phone!r} at {item.onset:.3f} s is past the end of {item.file!r}'s "
                         f"{len(features)} frames at {frame_rate:g} frames/s")
    first = max(0, int(np.ceil(item.onset * frame_rate - 0.5)))
    last = min(len(features), int(np.floor(item.offset * frame_rate - 0.5)) + 1)
    if last <= first:
        middle = min(len(features) - 1, int((item.onset + item.offset) / 2 * frame_rate))
        first, last = middle, middle + 1
    return features[first:last]


def dtw_distances(sequences: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]], batch: int = 2048) -> np.ndarray:
    """DTW distance of each pair of ``sequences`` (each ``(n_i, D)``): ``(len(pairs),)``."""
    out = np.zeros(len(pairs))
    unit = [torch.nn.functional.normalize(s.float(), dim=-1) for s in sequences]
    order = sorted(range(len(pairs)), key=lambda p: max(len(unit[pairs[p][0]]), len(unit[pairs[p][1]])))
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        a = torch.nn.utils.rnn.pad_sequence([unit[pairs[p][0]] for p in chunk], batch_first=True)   # (P, N, D)
        b = torch.nn.utils.rnn.pad_sequence([unit[pairs[p][1]] for p in chunk], batch_first=True)   # (P, M, D)
        cost = torch.arccos((a @ b.transpose(1, 2)).clamp(-1, 1)) / torch.pi                       # (P, N, M)
        total = torch.full((len(chunk), cost.shape[1] + 1, cost.shape[2] + 1), torch.inf)
        total[:, 0, 0] = 0
        for i in range(1, cost.shape[1] + 1):
            for j in range(1, cost.shape[2] + 1):
                best = torch.minimum(torch.minimum(total[:, i - 1, j - 1], total[:, i - 1, j]), total[:, i, j - 1])
                total[:, i, j] = cost[:, i - 1, j - 1] + best
        n = torch.tensor([len(unit[pairs[p][0]]) for p in chunk])
        m = torch.tensor([len(unit[pairs[p][1]]) for p in chunk])
        out[chunk] = (total[torch.arange(len(chunk)), n, m] / (n + m)).numpy()
    return out


def _cells(items: Sequence[Item], mode: str) -> list[tuple[tuple[str, str], str, list[int], list[int], list[int]]]:
    """``((phone_a, phone_b), speaker of A and B, A, B, X)`` index lists, one per cell of the ABX task."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[(item.prev, item.next, item.speaker, item.phone)].append(index)
    by_context: dict[tuple, dict[tuple[str, str], list[int]]] = defaultdict(dict)
    for (prev, nxt, speaker, phone), members in groups.items():
        by_context[(prev, nxt)][(speaker, phone)] = members
    cells = []
    for table in by_context.values():
        for (s_ab, a), (s_b, b) in itertools.permutations(table, 2):
            if s_ab != s_b or a == b:
                continue
            if mode == "within":
                if len(table[(s_ab, a)]) >= 2:
                    cells.append(((a, b), s_ab, table[(s_ab, a)], table[(s_ab, b)], table[(s_ab, a)]))
            else:
                for (s_x, x_phone), xs in table.items():
                    if x_phone == a and s_x != s_ab:
                        cells.append(((a, b), s_ab, table[(s_ab, a)], table[(s_ab, b)], xs))
    return cells


def abx_error(features: Mapping[str, np.ndarray | torch.Tensor], items: Sequence[Item], frame_rate: float = 100.0,
              mode: str = "within", max_per_group: int = 5, seed: int = 0) -> dict[str, float]:
    """ABX error rate of ``features`` (file -> ``(T, D)``, frame ``k`` centred at ``(k + 0.5) /
    frame_rate`` s) on ``items``; ``mode`` is ``within`` or ``across`` (speaker). Returns
    ``{"error", "cells", "triplets", "phone_pairs"}``; the error is NaN when no cell exists."""
    if mode not in ("within", "across"):
        raise ValueError(f"mode is 'within' or 'across', not {mode!r}")
    rng = random.Random(seed)
    groups: dict[tuple, list[Item]] = defaultdict(list)
    for item in items:
        if item.file in features:
            groups[(item.prev, item.next, item.speaker, item.phone)].append(item)
    kept = [i for members in groups.values() for i in (rng.sample(members, max_per_group)
                                                        if len(members) > max_per_group else members)]
    cells = _cells(kept, mode)
    needed: dict[tuple[int, int], int] = {}
    for _, _, A, B, X in cells:
        for x in X:
            for other in itertools.chain(A, B):
                if other != x:
                    needed.setdefault((other, x), len(needed))
    sequences = [torch.as_tensor(item_frames(np.asarray(features[i.file]), i, frame_rate)) for i in kept]
    distance = dtw_distances(sequences, list(needed))
    per_speaker: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    triplets = 0
    for pair, speaker, A, B, X in cells:
        errors = []
        for a, b, x in itertools.product(A, B, X):
            if a == x:
                continue
            d_ax, d_bx = distance[needed[(a, x)]], distance[needed[(b, x)]]
            errors.append(1.0 if d_ax > d_bx else 0.5 if d_ax == d_bx else 0.0)
        if errors:
            per_speaker[pair][speaker].append(float(np.mean(errors)))
            triplets += len(errors)
    per_pair = [np.mean([np.mean(cells) for cells in speakers.values()]) for speakers in per_speaker.values()]
    return {"error": float(np.mean(per_pair)) if per_pair else float("nan"),
            "cells": sum(len(cells) for speakers in per_speaker.values() for cells in speakers.values()),
            "triplets": triplets, "phone_pairs": len(per_pair)}
