"""Linear layers that decode fast on CPU."""

from __future__ import annotations

import torch
from torch import nn

# oneDNN lays a weight out for a row count; 16 served 1-256 rows best (docs/results/linear_layout.md).
PACKED_FOR_ROWS = 16


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) laid out by oneDNN for ``packed_product``."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight as ``prepack`` laid it out."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """``nn.Linear`` that, when no gradient is wanted, multiplies by a copy of its weight laid out in
    advance by oneDNN ("prepacked"): same parameters, same state dict, same result up to the order of
    summation.

    A decoding step multiplies every weight by one row per sequence, and the float32 GEMM behind
    ``F.linear`` reads SmolLM2-135M's weights at 6-12 GB/s (this CPU streams 31-49) for 1-16 rows; the
    prepacked product runs 1.7-4.0x faster at 1-64 rows in float32, 1.3-1.9x in bfloat16, and
    1.05-1.25x for prefill chunks of 256-512 rows (docs/results/linear_layout.md). The copy costs
    the weight's memory once more; it is made on the first call without gradients and again whenever
    the weight changes (its version, storage or dtype). Training, autograd and other devices keep
    ``F.linear``.
    """

    _packed: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._can_pack(x):
            return super().forward(x)
        return packed_product(x, self._packed_weight(), self.bias)

    def _can_pack(self, x: torch.Tensor) -> bool:
        wants_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad))
        return (not wants_grad and x.device.type == "cpu" and x.dtype == self.weight.dtype
                and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available())

    def _packed_weight(self) -> torch.Tensor:
        weight = self.weight
        key = (weight.data_ptr(), 0 if weight.is_inference() else weight._version, weight.dtype)
        if self._packed is None or self._packed[0] != key:
            self._packed = None                                        # free the stale copy before making one
            self._packed = (key, prepack(weight))
        return self._packed[1]

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed copy out (oneDNN's layout has no storage to copy)."""
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        return state


def pack_linears(model: nn.Module) -> None:
    """Make every plain ``nn.Linear`` of ``model`` a ``PackedLinear`` in place: parameters, weight
    tying and state dict stay as they are."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = PackedLinear
