"""VectorQuantizer: straight-through gradients, losses, masks, EMA and gradient modes, the
reservoir, re-estimation (all codes or dead ones) and its schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynacomp.nn import VectorQuantizer, VQConfig


def quantizer(dim: int = 3, k: int = 4, **options) -> VectorQuantizer:
    """Without BatchNorm, so codes live in the input space."""
    torch.manual_seed(0)
    return VectorQuantizer(dim, k, **{"batch_norm": False, **options})


def blobs(k: int = 4, per: int = 64, dim: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres (k, dim), points (k * per, dim))``: tight, well separated clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 4
    return centres, (centres[:, None] + 0.05 * torch.randn(k, per, dim, generator=g)).reshape(-1, dim)


def test_nearest_code_and_straight_through():
    vq = quantizer(commitment=0.0)
    x = torch.randn(2, 5, 3, requires_grad=True)
    quantized, indices, _ = vq(x)
    nearest = torch.cdist(x.detach().reshape(-1, 3), vq.codebook.detach()).argmin(1)
    assert torch.equal(indices.reshape(-1), nearest)
    assert torch.allclose(quantized, vq.codebook[indices])
    w = torch.randn_like(x)
    (quantized * w).sum().backward()
    assert torch.equal(x.grad, w)                 # dL/dx = dL/dq: the quantiser is skipped backwards


def test_losses_and_their_gradients():
    """Gradient mode: commitment pulls x to its code, the codebook term pulls codes to their inputs."""
    vq = quantizer(commitment=0.25)
    x = torch.randn(10, 3, requires_grad=True)
    quantized, indices, loss = vq(x)
    codes = vq.codebook[indices].detach()
    assert loss.item() == pytest.approx(1.25 * F.mse_loss(x, codes).item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(x.grad, 0.25 * 2 * (x - codes).detach() / x.numel(), atol=1e-7)
    expected = torch.zeros_like(vq.codebook).index_add_(0, indices, 2 * (codes - x.detach()) / x.numel())
    assert torch.allclose(vq.codebook.grad, expected, atol=1e-7)


def test_ema_mode_learns_cluster_means_without_gradients():
    centres, x = blobs()
    torch.manual_seed(0)
    vq = VectorQuantizer(3, 4, batch_norm=False, update="ema", ema_decay=0.5)
    assert not list(vq.parameters()) and vq.param_groups() == []
    vq.codebook.copy_(centres + 0.5)               # start near, not on, the clusters
    for _ in range(30):
        _, _, loss = vq(x)
    assert torch.allclose(vq.codebook, x.reshape(4, -1, 3).mean(1), atol=1e-3)
    codes = vq.codebook[vq(x)[1]]
    assert loss.item() == pytest.approx(0.25 * F.mse_loss(x, codes).item(), rel=1e-3)   # commitment only


def test_mask_equals_running_on_the_valid_frames_alone():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 6, requires_grad=True)
    mask = torch.rand(3, 7) > 0.3
    vq = VectorQuantizer(6, 8, batch_norm=True, codebook_dim=4)
    alone = VectorQuantizer(6, 8, batch_norm=True, codebook_dim=4)
    alone.load_state_dict(vq.state_dict())
    quantized, indices, loss = vq(x, mask)
    ref_q, ref_i, ref_loss = alone(x.detach()[mask])
    assert torch.allclose(quantized[mask], ref_q, atol=1e-6) and torch.equal(indices[mask], ref_i)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert (quantized[~mask] == 0).all() and (indices[~mask] == -1).all()
    assert torch.allclose(vq.norm.running_mean, alone.norm.running_mean)   # statistics of real frames only
    quantized.sum().backward()
    assert (x.grad[~mask] == 0).all()
    assert vq.code_counts.sum() == mask.sum()


def test_all_padding_gives_zero_loss_with_the_codebook_in_the_graph():
    vq = quantizer()
    _, indices, loss = vq(torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and (indices == -1).all() and vq.codebook.grad is not None


def test_reservoir_is_a_uniform_sample():
    vq = quantizer(reestimate_every=1, reservoir_size=500)
    torch.manual_seed(0)
    stream = torch.arange(10000.0)[:, None].expand(-1, 3)
    for chunk in stream.split(37):
        vq._sample(chunk)
    kept = vq._reservoir[:, 0]
    assert vq._filled == 500 and vq._seen == 10000 and len(kept.unique()) == 500
    assert abs(kept.mean().item() - 5000) < 400      # ~ 2.5 standard errors of a uniform sample
    assert (kept < 2500).sum() > 75 and (kept >= 7500).sum() > 75


def test_reservoir_state_round_trip():
    vq = quantizer(reestimate_every=1, reservoir_size=50)
    vq.train()
    vq(torch.randn(80, 3))
    state = vq.reservoir_state()
    other = quantizer(reestimate_every=1, reservoir_size=50)
    other.load_reservoir_state(state)
    assert torch.equal(other._reservoir, vq._reservoir) and other._seen == 80


def test_reestimate_places_codes_on_the_data():
    centres, x = blobs()
    vq = quantizer(reestimate_every=1)
    vq(x)
    assert vq.reestimate() == 4
    assert torch.cdist(vq.codebook.detach(), centres).min(1).values.max() < 0.05
    assert vq._filled == 0 and vq.code_counts.sum() == 0
    _, indices, _ = vq(x)
    assert sorted(indices.unique().tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("update", ["gradient", "ema"])
def test_reseeding_replaces_only_underused_codes(update):
    centres, x = blobs(per=64)
    vq = quantizer(k=5, reestimate_every=1, reseed_below=0.5, update=update)
    # codes 0-1 take blobs 0-1; code 2 sits between blobs 2 and 3 and takes both; codes 3-4 are
    # far away and take nothing
    codebook = torch.stack([centres[0], centres[1], (centres[2] + centres[3]) / 2,
                            centres[3] + 50.0, torch.full((3,), 100.0)])
    vq.codebook.data.copy_(codebook)
    vq(x)
    vq.codebook.data.copy_(codebook)   # undo the EMA update of this batch: the fixed codes stay put
    counts = vq.code_counts.tolist()
    assert counts[:3] == [64, 64, 128] and counts[3:] == [0, 0]
    before = vq.codebook.detach().clone()
    assert vq.reestimate(underused_only=True) == 2
    assert torch.equal(vq.codebook[:3], before[:3])
    if update == "ema":
        assert vq.ema_count.tolist()[3:] == [1.0, 1.0] and torch.equal(vq.ema_sum[3:], vq.codebook[3:])
    # the two new codes go where the fixed ones cover the data worst: blobs 2 and 3
    assert torch.cdist(vq.codebook[3:].detach(), centres[2:4]).min(1).values.max() < 0.05


def test_reseeding_threshold_is_relative_to_the_mean_count():
    vq = quantizer(k=4, reestimate_every=1, reseed_below=0.5)
    vq.code_counts.copy_(torch.tensor([100, 60, 27, 22]))   # mean 52.25: below 26.1 is underused
    vq._sample(torch.randn(50, 3))
    assert vq.reestimate(underused_only=True) == 1


def test_schedule_reestimates_all_codes_then_reseeds_underused_ones(monkeypatch):
    vq = quantizer(bypass_steps=4, reestimate_every=3, reestimate_until=7, reseed_until=13)
    calls = []
    monkeypatch.setattr(vq, "reestimate", lambda underused_only=False: calls.append(underused_only) or 1)
    steps = [step for step in range(16) if vq.on_step_start(step)]
    assert steps == [4, 7, 10, 13] and calls == [False, False, True, True]


def test_schedule_bypass_then_periodic_reestimation():
    _, x = blobs()
    vq = quantizer(bypass_steps=4, reestimate_every=3, reestimate_until=10, reseed_until=0)
    replaced = []
    for step in range(14):
        replaced.append(vq.on_step_start(step))
        quantized, indices, loss = vq(x)
        if step < 4:
            assert vq.bypass and torch.equal(quantized, x) and (indices == -1).all() and loss.item() == 0
    assert [s for s, r in enumerate(replaced) if r] == [4, 7, 10]
    assert not vq.collect                            # nothing left to re-estimate


def test_first_reestimation_sees_only_the_last_period_of_the_warm_up():
    vq = quantizer(bypass_steps=6, reestimate_every=3)
    for step in range(6):
        vq.on_step_start(step)
        vq(torch.full((5, 3), float(step)))
    assert set(vq._reservoir[:vq._filled, 0].tolist()) == {3.0, 4.0, 5.0}


def test_param_groups_and_config():
    vq = VectorQuantizer(8, 16)
    assert vq.config == VQConfig(codebook_size=16)
    [group] = vq.param_groups()
    assert group["params"] == [vq.codebook] and group["lr_mult"] == VQConfig().codebook_lr_mult
    assert group["weight_decay"] == 0.0
    same = VectorQuantizer.from_config(8, VQConfig(codebook_size=16, codebook_dim=4))
    assert same.codebook.shape == (16, 4) and same(torch.randn(2, 8))[0].shape == (2, 8)
    with pytest.raises(ValueError, match="update"):
        VectorQuantizer(8, 16, update="kmeans")


@pytest.mark.parametrize("update", ["gradient", "ema"])
def test_bf16_autocast_quantises_in_the_codebook_dtype(update):
    """Through the warm-up and a re-estimation under autocast (a bf16 projection feeds it), with
    the codes the fp32 quantiser picks."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 32, codebook_dim=4, update=update, bypass_steps=2, reestimate_every=2,
                         reservoir_size=64, kmeans_iters=2)
    x = torch.randn(2, 50, 16)
    for step in range(4):
        vq.on_step_start(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantized, indices, loss = vq(x)
    assert quantized.dtype == torch.float32 and bool((indices >= 0).all()) and torch.isfinite(loss)
    vq.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = vq(x)[1]
    with torch.no_grad():
        assert torch.equal(under_autocast, vq(x)[1])
