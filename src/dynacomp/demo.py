"""``dynacomp demo``: the main job on the embedded defaults, end to end, offline."""

from __future__ import annotations

import argparse

from dynacomp.console import add_json_flag, emit, format_mapping
from dynacomp.models import DEFAULT_MODEL, load_causal_lm, model_info

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune,"


def run(args: argparse.Namespace) -> int:
    info = model_info(DEFAULT_MODEL)
    model, tokenizer = load_causal_lm(DEFAULT_MODEL)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    text = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    result = {
        "model": {k: info[k] for k in ("name", "architecture", "layers", "attention_heads", "kv_heads")},
        "generation": {"prompt": PROMPT, "continuation": text},
    }
    emit(result, args.json, format_mapping)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the main job on the embedded defaults",
                            description="Loads the embedded SmolLM2 and runs the main job offline.")
    add_json_flag(parser)
    parser.set_defaults(func=run)
