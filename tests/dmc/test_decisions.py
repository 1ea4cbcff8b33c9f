import torch

from dynacomp.dmc.modeling import channels, decisions


def slow_accumulate(x, alpha, omega, window):
    """Windowed weighted mean of each hard run, one position at a time."""
    out = torch.zeros_like(x)
    length = x.shape[-2]
    for i in range(length):
        members = [i]
        while alpha[..., members[-1]].item() > 0 and len(members) < window:
            members.append(members[-1] - 1)
        w = omega[..., members]
        out[..., i, :] = (w.unsqueeze(-1) * x[..., members, :]).sum(-2) / w.sum(-1, keepdim=True)
    return out


def test_accumulate_matches_the_definition_for_hard_decisions():
    torch.manual_seed(0)
    for window in (1, 3, 12, 50):
        x = torch.randn(1, 1, 30, 5)
        alpha = (torch.rand(1, 1, 30) < 0.7).float()
        alpha[..., 0] = 0
        omega = torch.rand(1, 1, 30) + 0.1
        torch.testing.assert_close(decisions.accumulate(x, alpha, omega, window),
                                   slow_accumulate(x, alpha, omega, window))


def test_accumulate_soft_is_the_recurrence_of_the_paper():
    """x~_i = (alpha_i A_{i-1} + omega_i x_i) / (alpha_i C_{i-1} + omega_i) with an unbounded window."""
    torch.manual_seed(1)
    x, alpha, omega = torch.randn(2, 3, 20, 4), torch.rand(2, 3, 20), torch.rand(2, 3, 20) + 0.1
    alpha[..., 0] = 0
    num, den, expected = torch.zeros(2, 3, 4), torch.zeros(2, 3), []
    for i in range(20):
        num = alpha[..., i, None] * num + omega[..., i, None] * x[..., i, :]
        den = alpha[..., i] * den + omega[..., i]
        expected.append(num / den[..., None])
    torch.testing.assert_close(decisions.accumulate(x, alpha, omega, window=20), torch.stack(expected, -2))


def test_forced_decisions_give_the_ratio():
    n = torch.arange(1000)
    for ratio in (1, 2, 3.5, 4, 8):
        appends = (decisions.forced_decisions(n, ratio) == 0).sum().item()
        assert abs(1000 / appends - ratio) < 0.01 * ratio
    assert decisions.forced_decisions(n, 1).sum() == 0  # ratio 1: always append


def test_importance_averages_the_query_group():
    q = torch.zeros(1, 6, 2, 8)
    q[0, :3, :, -1] = torch.tensor([1.0, 2.0, 3.0])[:, None]   # group of KV head 0
    omega = channels.importance(q, kv_heads=2, bias=0.0)
    torch.testing.assert_close(omega[0, :, 0], torch.sigmoid(torch.tensor([2.0, 0.0])))


def test_gumbel_relaxation_is_sharp_at_low_temperature():
    logits = torch.full((100_000,), 1.0)
    alpha = torch.sigmoid(decisions.gumbel_sigmoid_logits(logits, 0.1, torch.Generator().manual_seed(0)))
    assert abs(alpha.mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01
    assert ((alpha < 0.05) | (alpha > 0.95)).float().mean() > 0.8
