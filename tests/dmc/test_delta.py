"""A retrofitted model stored as a delta over its base rebuilds the same model."""

import pytest
import torch

from dynacomp.dmc import DMCConfig, convert
from dynacomp.dmc.delta import load_delta, write_delta
from dynacomp.dmc.modeling import channels

from .tiny import tiny_model


@pytest.mark.parametrize("probe", [False, True], ids=["stolen-channel", "eviction-probe"])
def test_a_full_rank_delta_rebuilds_the_retrofitted_model(tmp_path, monkeypatch, probe):
    base = tiny_model()
    trained = tiny_model()
    with torch.no_grad():
        for name, weight in trained.named_parameters():
            if "self_attn" in name:
                weight += 0.05 * torch.randn_like(weight)
        convert(trained, DMCConfig(policy="dms", eviction_window=3, decision_threshold=0.5, eviction_probe=probe))
        for probe in channels.eviction_probes(trained):
            probe.weight.normal_()
    monkeypatch.setattr("dynacomp.models.load_causal_lm", lambda name, dtype=torch.float32: (tiny_model(), None))
    report = write_delta(trained, base, tmp_path / "delta.safetensors", "tiny", rank=64)   # full rank (64 wide)
    assert report["kept_change"] > 0.999
    rebuilt, _ = load_delta(tmp_path / "delta.safetensors")
    assert rebuilt.dmc_config == trained.dmc_config
    for restored, original in zip(channels.eviction_probes(rebuilt), channels.eviction_probes(trained), strict=True):
        assert torch.equal(restored.weight, original.weight)        # a module the base lacks travels exactly
    ids = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, use_cache=False).logits, trained(ids, use_cache=False).logits,
                                   atol=2e-2, rtol=0)
    low, _ = load_delta(tmp_path / "delta.safetensors", decision_threshold=1.0)
    assert low.dmc_config.decision_threshold == 1.0
