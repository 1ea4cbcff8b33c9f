"""A linear phone probe: how linearly separable frame features are.

Logistic regression on frozen features (standardised with the training statistics), full-batch
Adam on the training frames, accuracy on the test frames. Test frames whose label never occurs in
training are left out (they cannot be predicted by any probe) and counted in ``unseen``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynacomp.config import field


@dataclass
class ProbeConfig:
    steps: int = field(300, help="full-batch Adam steps")
    lr: float = field(0.05, help="Adam learning rate")
    weight_decay: float = field(1e-4, help="L2 penalty on the weights")
    seed: int = field(0, help="seed of the probe's initialisation")


def linear_probe(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor, test_y: Sequence[str],
                 config: ProbeConfig | None = None) -> dict[str, float]:
    """Train on ``train_x (N, D)`` with labels ``train_y`` (N strings), score on ``test_x (M, D)``.

    Returns ``accuracy`` (test), ``train_accuracy``, ``classes`` and ``unseen`` (test frames dropped).
    """
    config = config or ProbeConfig()
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in train_y])
    keep = torch.tensor([c in index for c in test_y], dtype=torch.bool)
    test_target = torch.tensor([index[c] for c in test_y if c in index])
    mean, std = train_x.float().mean(0), train_x.float().std(0).clamp(min=1e-6)
    x, x_test = (train_x.float() - mean) / std, (test_x.float()[keep] - mean) / std
    generator = torch.Generator().manual_seed(config.seed)
    weight = (torch.randn(x.shape[1], len(classes), generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=config.lr)
    for _ in range(config.steps):
        loss = F.cross_entropy(x @ weight + bias, y) + config.weight_decay * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train_acc = ((x @ weight + bias).argmax(1) == y).float().mean().item()
        test_acc = ((x_test @ weight + bias).argmax(1) == test_target).float().mean().item() if len(test_target) else float("nan")
    return {"accuracy": test_acc, "train_accuracy": train_acc, "classes": len(classes), "unseen": int((~keep).sum())}
