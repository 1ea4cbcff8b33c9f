"""FLOPs of the hourglass, counted from its shapes (2 FLOPs per multiply-add), as the model runs them.

Counted, per forward pass on ``rows`` sequences of ``length`` characters:

- each layer on ``n`` positions per row: the q/k/v and output projections (``8 n D^2``), the
  content scores, position scores and weighted values (``3 x 2 n^2 D``: every query-key pair is
  computed and the future masked afterwards), the feed-forward (``4 n D F``), and once for all
  rows the projection of the ``n`` relative positions (``2 n D^2``);
- the pre and post layers at ``length``; the middle layers at ``1 + groups`` (the null group and
  the closed groups, ``groups`` the most in any row: rows are padded to it), or at ``length`` in
  the vanilla model;
- the boundary predictor of the unigram, entropy and gumbel sources (``2 T D F + 2 T F``);
- pooling (an addition per element of the pre-layer output, a division per element of the
  groups) and upsampling (the residual addition, one per element: the lookup itself is a gather);
- the output layer (``2 T D V``).

Not counted: layer norms, softmaxes, activations, dropout, the embedding lookup, the optimizer.
A training step counts as 3x its forward pass (the backward pass about twice the forward).
"""

from __future__ import annotations

from dynacomp.dtp.config import DTPConfig

PREDICTED = ("unigram", "entropy", "gumbel")   # sources with a boundary predictor


def layer_flops(config: DTPConfig, rows: int, n: int) -> int:
    """One Transformer layer on ``rows`` sequences of ``n`` positions."""
    D, F = config.d_model, config.d_ff
    per_row = 8 * n * D * D + 6 * n * n * D + 4 * n * D * F
    return rows * per_row + 2 * n * D * D   # the relative positions are projected once per forward, for all rows


def forward_flops(config: DTPConfig, rows: int, length: int, groups: int = 0) -> int:
    """A forward pass on ``rows`` sequences of ``length`` characters whose middle stack runs on
    ``1 + groups`` positions per row (``groups`` is ignored by the vanilla model)."""
    D, T = config.d_model, length
    outer = (config.n_pre + config.n_post) * layer_flops(config, rows, T)
    head = rows * 2 * T * D * config.vocab_size
    if not config.shortens:
        return outer + config.n_mid * layer_flops(config, rows, T) + head
    middle = config.n_mid * layer_flops(config, rows, 1 + groups)
    predictor = rows * (2 * T * D * config.d_ff + 2 * T * config.d_ff) if config.boundaries in PREDICTED else 0
    pool_and_upsample = rows * (T * D + groups * D) + rows * T * D
    return outer + middle + predictor + pool_and_upsample + head


def train_step_flops(config: DTPConfig, rows: int, length: int, groups: int = 0) -> int:
    """Forward and backward on one batch: 3x ``forward_flops``."""
    return 3 * forward_flops(config, rows, length, groups)
