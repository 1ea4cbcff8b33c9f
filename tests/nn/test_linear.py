import pytest
import torch
from torch import nn

from dynacomp.nn.linear import TransposedLinear, transpose_linears


@pytest.mark.parametrize("shape", [(576,), (3, 576), (2, 5, 576), (2, 1, 576), (4, 1, 576)])   # 1, 3, 10, 2, 4 rows
@pytest.mark.parametrize("bias", [False, True])
def test_it_computes_what_linear_computes_and_returns_a_contiguous_tensor(shape, bias):
    torch.manual_seed(0)
    plain = nn.Linear(576, 1536, bias=bias)
    transposed = nn.Linear(576, 1536, bias=bias)
    transposed.load_state_dict(plain.state_dict())
    transpose_linears(transposed)
    x = torch.randn(shape)
    out = transposed(x)
    assert type(transposed) is TransposedLinear and out.is_contiguous()
    torch.testing.assert_close(out, plain(x), atol=1e-5, rtol=1e-5)      # fp32: only the summation order differs


def test_bfloat16_keeps_the_usual_kernel_and_gradients_flow():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    expected = nn.functional.linear(x, layer.weight, layer.bias)
    transpose_linears(layer)
    assert torch.equal(layer(x), expected)
    fp32 = nn.Linear(8, 4)
    transpose_linears(fp32)
    x = torch.randn(3, 8, requires_grad=True)
    fp32(x).sum().backward()
    torch.testing.assert_close(x.grad, fp32.weight.sum(0).expand(3, 8))
    torch.testing.assert_close(fp32.weight.grad, x.detach().sum(0).expand(4, 8))


def test_parameters_tying_and_state_dict_stay():
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    model[1].weight = model[0].weight                                    # tied like an LM's output layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    transpose_linears(model)
    assert model[1].weight is model[0].weight
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
