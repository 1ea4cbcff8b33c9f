"""Saving and loading DMC checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynacomp.dmc import DMCConfig, convert, load, save

from .tiny import tiny_model


def test_save_and_load_round_trip(tmp_path):
    model = convert(tiny_model(), DMCConfig(force_cr=3, window=7))
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    save(model, tmp_path / "dmc")
    loaded, tokenizer = load(tmp_path / "dmc")
    assert tokenizer is None and loaded.dmc_config == model.dmc_config
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, expected)
    assert load(tmp_path / "dmc", force_cr=None)[0].dmc_config.force_cr is None
    with pytest.raises(ValueError, match="dynacomp_dmc"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "dmc")
    assert json.loads((tmp_path / "dmc" / "dmc_config.json").read_text())["base_model_type"] == "llama"
