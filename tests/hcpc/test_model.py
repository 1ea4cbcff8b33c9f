"""hCPC model: frame counts, causality, the losses by hand, and boundary learning on toy problems."""

import numpy as np
import pytest
import torch

from dynacomp.hcpc.losses import aligned_cpc_loss, cpc_loss, frame_negatives, neighbour_cpc_loss
from dynacomp.hcpc.model import HCPC, HCPCConfig, enforce_min_width
from dynacomp.metrics.segmentation import peak_boundaries
from dynacomp.nn.boundaries import gumbel_sigmoid_boundaries
from dynacomp.nn.policy import EMABaseline, bernoulli_boundaries, reinforce_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dim=32, negatives=8, codebook_size=16, vq_bypass_steps=0, vq_reestimate_every=0, predict_steps=4)


@pytest.mark.parametrize("causal", [True, False])
def test_frames_are_10ms(causal):
    model = HCPC(HCPCConfig(**TINY, causal=causal, hierarchical=False))
    z, c = model.low_level(torch.randn(2, 160 * 13 + 77))
    assert z.shape == c.shape == (2, 13, 32)


def test_causal_contexts_ignore_the_future():
    model = HCPC(HCPCConfig(**TINY, causal=True, hierarchical=False)).eval()
    audio = torch.randn(1, 160 * 20)
    changed = audio.clone()
    changed[:, 160 * 10:] = torch.randn(1, 160 * 10)
    (z1, c1), (z2, c2) = model.low_level(audio), model.low_level(changed)
    assert torch.allclose(c1[:, :10], c2[:, :10]) and torch.allclose(z1[:, :10], z2[:, :10])
    assert not torch.allclose(c1[:, 10:], c2[:, 10:])
    official = HCPC(HCPCConfig(**TINY, causal=False, hierarchical=False)).eval()
    assert not torch.allclose(official.low_level(audio)[0][:, 9], official.low_level(changed)[0][:, 9])   # looks ahead


def test_aligned_loss_with_one_alignment_is_diagonal_cpc():
    g = torch.Generator().manual_seed(0)
    z, pred = torch.randn(2, 9, 4, generator=g), torch.randn(2, 9, 3, 4, generator=g)
    negatives = frame_negatives(z, 5, g)
    # M = K = 3: the only alignment maps prediction m to frame m; the loss is then the mean over
    # contexts t < T - K of plain InfoNCE of step m from t, summed over m and divided by K
    aligned = aligned_cpc_loss(pred, z, negatives, window=3)
    by_hand = []
    for m in range(3):
        p = pred[:, :6, m]
        logits = torch.cat([(p * z[:, m + 1:m + 7]).sum(-1, keepdim=True),
                            torch.einsum("btd,btnd->btn", p, negatives[:, m + 1:m + 7])], -1) / 4
        by_hand.append(-torch.log_softmax(logits, -1)[..., 0])
    assert aligned.item() == pytest.approx(torch.stack(by_hand).sum(0).mean().item() / 3, rel=1e-5)


def test_aligned_loss_has_finite_gradients_where_alignments_are_unreachable():
    # the paper's M = 6 predictions over K = 12 frames: the first frames cannot hold the later
    # predictions, and adding two such unreachable cells that depend on the weights gave NaN
    g = torch.Generator().manual_seed(0)
    z, pred = torch.randn(2, 20, 4, generator=g), torch.randn(2, 20, 6, 4, generator=g, requires_grad=True)
    loss = aligned_cpc_loss(pred, z, frame_negatives(z, 5, g), window=12)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_cpc_loss_by_hand():
    z = torch.eye(3)[None].repeat(1, 2, 1)                 # (1, 6, 3): e0 e1 e2 e0 e1 e2
    pred = 100 * z.roll(-1, 1)[:, :, None]                 # predicts the next frame exactly
    negatives = torch.stack([z.roll(1, 1), z.roll(2, 1)], 2)   # (1, 6, 2, 3): the two other vectors
    loss, accuracy = cpc_loss(pred, z, negatives)
    assert accuracy.item() == 1.0 and loss.item() == pytest.approx(2 * np.exp(-100 / 3), rel=1e-3)


def test_cpc_accuracy_counts_the_positive_winning_below_even_odds():
    z = torch.zeros(1, 2, 4)
    z[0, 1, 0] = 1.0
    pred = torch.zeros(1, 2, 1, 4)
    pred[0, 0, 0, 0] = 8.0                                  # positive logit 8 / D = 2, negatives 0
    loss, accuracy = cpc_loss(pred, z, torch.zeros(1, 2, 128, 4))
    assert loss.item() > np.log(2) and accuracy.item() == 1.0   # p < 1/2, yet the positive is the argmax


def test_neighbour_loss_mask_and_tie():
    targets = torch.ones(1, 4, 2)                       # every segment the same vector: a tie, log 2
    losses, valid = neighbour_cpc_loss(torch.randn(1, 4, 2, 2), targets, torch.tensor([3]))
    assert valid[0].tolist() == [[True, True], [True, False], [False, False], [False, False]]
    assert torch.allclose(losses[valid], torch.tensor(np.log(2), dtype=torch.float32))


def test_min_width():
    closes = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=np.float32)
    assert enforce_min_width(closes, 3).tolist() == [0, 0, 0, 1, 0, 0, 0, 1]   # the last always closes
    assert enforce_min_width(closes, 1).tolist() == [1, 1, 0, 1, 0, 0, 1, 1]   # no segment too short


@pytest.mark.parametrize("estimator", ["reinforce", "straight_through"])
def test_boundary_estimators_learn_a_toy_pattern(estimator):
    """Sampled hard boundaries scored by their mismatches with a target pattern: REINFORCE with an
    EMA baseline, or the straight-through gradient of the mismatches, lowers the expected cost."""
    torch.manual_seed(0)
    target = (torch.arange(20) % 4 == 3).float()
    logits = torch.zeros(1, 20, requires_grad=True)
    optimizer, baseline = torch.optim.Adam([logits], lr=0.1), EMABaseline(0.9)
    def expected():
        return (torch.sigmoid(logits) - target).abs().sum().item()
    before = expected()
    for _ in range(150):
        if estimator == "reinforce":
            b, log_prob = bernoulli_boundaries(logits.expand(32, 20), 1.0, sample=True)
            cost = (b - target).abs().sum(1)
            loss = reinforce_loss(log_prob, cost, baseline(cost))
        else:
            b = gumbel_sigmoid_boundaries(logits.expand(32, 20), 1.0, sample=True)
            loss = (b - target).abs().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert expected() < 0.3 * before


def tones(batch: int, frames: int) -> torch.Tensor:
    """Toy speech: a new pure tone (one of six frequencies) every four 10 ms frames."""
    g = torch.Generator().manual_seed(0)
    freqs = torch.tensor([200.0, 350.0, 500.0, 800.0, 1200.0, 2000.0])
    f = freqs[torch.randint(0, 6, (batch, frames // 4), generator=g)].repeat_interleave(4 * 160, 1)
    return torch.sin(2 * np.pi * f * torch.arange(frames * 160) / 16000)


@pytest.mark.parametrize("mode", ["reinforce", "straight_through"])
def test_training_steps_reduce_the_losses(mode):
    """On tones: the low level trains alone for 60 steps, then 60 joint steps lower the low-level,
    high-level and length-prior losses together."""
    torch.manual_seed(0)
    model = HCPC(HCPCConfig(**TINY, boundary_training=mode, mean_segment_frames=4.0, low_level_steps=60))
    audio = tones(4, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for step in range(120):
        model.set_step(step)
        loss, metrics = model(audio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics)
    joint = history[60:]
    for name in ("low_loss", "high_loss", "prior"):
        assert np.mean([m[name] for m in joint[-5:]]) < np.mean([m[name] for m in joint[:5]]), name
    assert np.mean([m["low_loss"] for m in joint[-5:]]) < np.mean([m["low_loss"] for m in history[:5]]) - 0.1
    assert "policy_loss" in metrics if mode == "reinforce" else "policy_loss" not in metrics


@pytest.mark.parametrize("mode", ["reinforce", "straight_through"])
def test_boundaries_start_at_the_length_prior_rate(mode):
    """Both estimators sample decisions at sigmoid(logit / temperature), the rate the prior sees."""
    torch.manual_seed(0)
    config = HCPCConfig(**TINY, mean_segment_frames=5.0, boundary_training=mode)
    model = HCPC(config)
    assert torch.sigmoid(model.boundary.net[-1].bias / config.temperature_start).item() == pytest.approx(1 / 5)
    with torch.no_grad():
        _, metrics = model(torch.randn(8, 160 * 200))
    assert metrics["frames_per_segment"] == pytest.approx(5.0, rel=0.2)


def test_low_level_trains_alone_before_the_joint_schedules_start():
    torch.manual_seed(0)
    model = HCPC(HCPCConfig(**TINY, low_level_steps=3, temperature_decay=0.5))
    audio = torch.randn(2, 160 * 32)
    model.set_step(2)
    loss, metrics = model(audio)
    loss.backward()
    assert "high_loss" not in metrics and all(p.grad is None for p in model.boundary.parameters())
    model.set_step(3)
    _, metrics = model(audio)
    assert "high_loss" in metrics and model.temperature == model.config.temperature_start
    model.set_step(4)
    assert model.temperature == model.config.temperature_start * 0.5


def test_segment_reads_out_logit_peaks_and_pools_the_high_level_over_them():
    torch.manual_seed(0)
    model = HCPC(HCPCConfig(**TINY)).eval()
    audio = torch.randn(160 * 60)
    decided = model.segment(audio)
    peaks = model.segment(audio, prominence=0.0)
    assert peaks.boundaries == peak_boundaries(decided.closing_scores, 0.0) and peaks.boundaries
    starts = [0] + peaks.boundaries
    assert all(torch.equal(peaks.high[t], peaks.high[s]) for s, e in zip(starts, starts[1:] + [60]) for t in range(s, e))
    assert len({tuple(row.tolist()) for row in peaks.high}) == len(starts)
    again = model.resegment(decided, 0.0)      # from the saved frames and logits, no encoder pass
    assert again.boundaries == peaks.boundaries and torch.equal(again.high, peaks.high)
