"""Linear layers that decode fast on CPU."""

from __future__ import annotations

import torch
from torch import nn

FEW_ROWS = 4


class TransposedLinear(nn.Linear):
    """``nn.Linear`` that multiplies 2-4 float32 rows as ``(weight @ x^T)^T``: same parameters, same
    state dict, same result up to the order of summation.

    A decoding step multiplies every weight by one row per sequence. For 2-4 rows the float32 GEMM
    behind ``F.linear`` reads the weights at a fraction of the memory bandwidth, and the product with
    its operands swapped does not: SmolLM2-135M's weights, read from memory on 2 threads of this
    project's CPU, took 92 / 113 / 78 ms against 30 / 46 / 32 for 2 / 3 / 4 rows
    (docs/results/linear_layout.md). For one row, 8 or more, and in bfloat16 the swapped product is
    no faster or slower, so those keep ``F.linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if not (1 < rows.shape[0] <= FEW_ROWS and x.dtype == torch.float32):
            return super().forward(x)
        out = (self.weight @ rows.T).T.contiguous()                 # F.linear returns it contiguous
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.weight.shape[0])


def transpose_linears(model: nn.Module) -> None:
    """Make every plain ``nn.Linear`` of ``model`` a ``TransposedLinear`` in place: parameters,
    weight tying and state dict stay as they are."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = TransposedLinear
