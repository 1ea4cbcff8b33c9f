import pytest
import torch

from dynacomp.dmc import DMCConfig, convert, zero_decision_channels
from tests.dmc.tiny import tiny_model


class CharTokenizer:
    """Token i <-> a letter; enough for the engine, which only encodes prompts and decodes outputs."""
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def served_model(kind: str, page_size: int = 4, window: int = 12):
    """A tiny model as the engine serves it: dense (compression off), DMC at a forced ratio, or DMS
    (with a threshold, or holding half its tokens with keep_share)."""
    model = tiny_model()
    model.generation_config.eos_token_id = None
    if kind.startswith("dms"):
        held = {"keep_share": 0.5, "control_block": 8, "control_window": 16} if kind == "dms-keep-share" else {}
        return convert(model, DMCConfig(policy="dms", decision_bias=0.05, eviction_window=3, page_size=page_size,
                                        **held))
    zero_decision_channels(model)
    config = DMCConfig(force_cr=2, page_size=page_size, window=window) if kind == "dmc" else DMCConfig(
        decision_threshold=float("inf"), page_size=page_size, window=window)
    return convert(model, config)


def offline_greedy(model, prompt: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture
def tokenizer():
    return CharTokenizer()
