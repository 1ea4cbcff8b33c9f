"""A tiny hourglass model for fast tests."""

import torch

from dynacomp.dtp import DTPConfig, HourglassLM

VOCAB = 7  # id 0 is the space


def tiny_model(boundaries: str, dropout: float = 0.0, seed: int = 0) -> HourglassLM:
    torch.manual_seed(seed)
    config = DTPConfig(boundaries=boundaries, n_pre=1, n_mid=2, n_post=1, d_model=32, n_heads=4, d_ff=64,
                       dropout=dropout, vocab_size=VOCAB, whitespace_ids=(0,), fixed_k=3)
    model = HourglassLM(config)
    if model.source is not None and hasattr(model.source, "predictor"):
        # Untrained predictor logits sit near 0; spread them so boundaries are a mix of 0 and 1.
        model.source.predictor[-1].weight.data.mul_(30)
    return model


def random_ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
