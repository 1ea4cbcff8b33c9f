"""``DTPConfig``: every default of the hourglass character LM, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dynacomp.config import field

Source = Literal["none", "fixed", "whitespace", "unigram", "entropy", "gumbel"]
SOURCES: tuple[str, ...] = ("none", "fixed", "whitespace", "unigram", "entropy", "gumbel")


@dataclass
class DTPConfig:
    """Defaults follow Nawrot et al. 2023 (§4.2): 2-8-2 layers, d_model 512, 8 heads, post-LN."""

    boundaries: Source = field("whitespace", help="boundary source: none (vanilla, all layers at full "
                               "length), fixed (every fixed_k characters), whitespace, unigram (predictor "
                               "supervised by SentencePiece piece ends), entropy (predictor supervised by "
                               "entropy spikes), gumbel (end to end with a binomial prior)")
    n_pre: int = field(2, help="layers before shortening")
    n_mid: int = field(8, help="layers on the shortened sequence")
    n_post: int = field(2, help="layers after upsampling")
    d_model: int = field(512, help="model width")
    n_heads: int = field(8, help="attention heads")
    d_ff: int = field(2048, help="feed-forward width (also the boundary predictor's hidden width)")
    dropout: float = field(0.1, help="dropout on activations and attention weights")
    vocab_size: int = field(256, help="characters in the vocabulary (dtp train sets it from the data)")
    whitespace_ids: tuple[int, ...] = field((32,), help="ids of the whitespace characters for the whitespace "
                                            "source (dtp train sets them from the data)")
    fixed_k: int = field(4, help="segment length of the fixed source")
    prior: float = field(0.2, help="gumbel: boundary rate of the binomial prior (paper: 0.2; 0.37 for Finnish)")
    temperature: float = field(0.5, help="gumbel: temperature of the relaxed Bernoulli sample")
    entropy_k: int = field(2, help="entropy: a boundary where the entropy exceeds each of this many predecessors")

    def __post_init__(self) -> None:
        if self.boundaries not in SOURCES:
            raise ValueError(f"unknown boundary source {self.boundaries!r}; known: {', '.join(SOURCES)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.fixed_k < 1 or self.entropy_k < 1:
            raise ValueError("fixed_k and entropy_k must be >= 1")

    @property
    def shortens(self) -> bool:
        return self.boundaries != "none"
