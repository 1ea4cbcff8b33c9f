"""Bits per character: a language model's cross-entropy in bits, per character of text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bits_per_character(nll_nats: float, num_characters: int) -> float:
    """Total negative log-likelihood in nats over a text of ``num_characters`` characters, in bits
    per character. For a character-level model (one token per character) this is the mean
    cross-entropy / ln 2; for a byte model on UTF-8 text pass the character count, not the bytes."""
    if num_characters <= 0:
        raise ValueError(f"num_characters must be positive, got {num_characters}")
    return nll_nats / num_characters / math.log(2)


def sum_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy in nats of ``logits (..., V)`` against ``targets (...)`` (a 0-d tensor)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
