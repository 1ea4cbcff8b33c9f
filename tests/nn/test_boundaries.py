import math

import torch

from dynacomp.nn.boundaries import binomial_rate_loss, entropy_spikes, gumbel_sigmoid_boundaries


def test_gumbel_is_deterministic_when_not_sampling():
    logits = torch.randn(4, 50)
    b = gumbel_sigmoid_boundaries(logits, 0.5, sample=False)
    assert torch.equal(b, (logits > 0).float())


def test_gumbel_sample_is_hard_with_a_straight_through_gradient():
    logits = torch.randn(4, 2000, requires_grad=True)
    b = gumbel_sigmoid_boundaries(logits, 0.5, sample=True, generator=torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    b.sum().backward()
    assert (logits.grad >= 0).all() and logits.grad.sum() > 0
    # P(sample = 1) = sigmoid(logit), whatever the temperature
    rate = gumbel_sigmoid_boundaries(torch.full((1, 20000), 1.0), 0.5, sample=True,
                                     generator=torch.Generator().manual_seed(1)).mean().item()
    assert abs(rate - torch.sigmoid(torch.tensor(1.0)).item()) < 0.02


def test_binomial_rate_loss_is_the_binomial_nll_per_position():
    b = torch.zeros(2, 10)
    b[0, :3] = 1
    b[1, :5] = 1
    dist = torch.distributions.Binomial(10, probs=torch.tensor(0.2))
    expected = -(dist.log_prob(torch.tensor(3.0)) + dist.log_prob(torch.tensor(5.0))) / 2 / 10
    torch.testing.assert_close(binomial_rate_loss(b, 0.2), expected)


def test_binomial_rate_loss_pulls_the_count_towards_the_prior():
    for count, sign in ((8.0, 1), (1.0, -1)):
        b = torch.zeros(1, 20)
        b[0, :int(count)] = 1
        b.requires_grad_(True)
        binomial_rate_loss(b, 0.2).backward()
        assert math.copysign(1, b.grad.sum().item()) == sign  # too many: push down; too few: push up


def test_entropy_spikes_match_a_loop():
    values = torch.randn(3, 30)
    for k in (1, 2, 4):
        spikes = entropy_spikes(values, k)
        for i in range(3):
            for t in range(30):
                expected = all(values[i, t] > values[i, t - j] for j in range(1, k + 1) if t - j >= 0)
                assert spikes[i, t].item() == float(expected)
