import copy

import pytest
import torch
from torch import nn

from dynacomp.nn.linear import PackedLinear, pack_linears


def packed_twin(plain: nn.Linear) -> nn.Linear:
    twin = copy.deepcopy(plain)
    pack_linears(twin)
    return twin


@pytest.mark.parametrize("shape", [(576,), (3, 576), (2, 5, 576), (4, 1, 576), (64, 576)])   # 1, 3, 10, 4, 64 rows
@pytest.mark.parametrize("bias", [False, True])
def test_without_gradients_it_computes_what_linear_computes_from_the_packed_copy(shape, bias):
    torch.manual_seed(0)
    plain = nn.Linear(576, 1536, bias=bias)
    packed = packed_twin(plain)
    x = torch.randn(shape)
    with torch.no_grad():
        out = packed(x)
        expected = plain(x)
    assert type(packed) is PackedLinear and packed._packed is not None
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)      # fp32: only the summation order differs


def test_bfloat16_within_its_rounding():
    torch.manual_seed(0)
    plain = nn.Linear(576, 192).to(torch.bfloat16)
    packed = packed_twin(plain)
    x = torch.randn(5, 576, dtype=torch.bfloat16)
    with torch.inference_mode():
        # both accumulate in fp32 and round once: outputs of size ~1 differ by at most a few bf16 ulps (2^-7)
        torch.testing.assert_close(packed(x), plain(x), atol=3e-2, rtol=1e-2)


def test_training_keeps_linear_and_its_gradients():
    torch.manual_seed(0)
    layer = packed_twin(nn.Linear(8, 4))
    x = torch.randn(3, 8, requires_grad=True)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()
    assert layer._packed is None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, 8))
    torch.testing.assert_close(layer.weight.grad, x.detach().sum(0).expand(4, 8))


def test_the_packed_copy_follows_the_weight():
    torch.manual_seed(0)
    layer = packed_twin(nn.Linear(16, 8))
    x = torch.randn(2, 16)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2)                                           # an optimizer step or a loaded state dict
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        layer.to(torch.bfloat16)
        assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_parameters_tying_state_dict_and_copies_stay():
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    model[1].weight = model[0].weight                                    # tied like an LM's output layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pack_linears(model)
    with torch.no_grad():
        model(torch.tensor([[1, 2]]))
    assert model[1].weight is model[0].weight
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    twin = copy.deepcopy(model)                                          # oneDNN's packed layout cannot be copied
    assert twin[1]._packed is None and twin[1].weight is twin[0].weight
