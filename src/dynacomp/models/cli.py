"""``dynacomp models``: list, inspect and try the pretrained language models."""

from __future__ import annotations

import argparse
import time

from dynacomp.console import add_json_flag, emit, format_mapping
from dynacomp.errors import UsageError
from dynacomp.models import DEFAULT_MODEL, EMBEDDED, load_causal_lm, model_info


def _list(args: argparse.Namespace) -> int:
    rows = [{"name": name, "package": f"{m.package}=={m.version}", "description": m.description}
            for name, m in EMBEDDED.items()]
    emit(rows, args.json, lambda rs: "\n".join(f"{r['name']:<16} {r['description']}" for r in rs)
         + "\nAlso accepted wherever a model is named: a local transformers folder or a Hugging Face id.")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    emit(info, args.json, lambda i: format_mapping({k: v for k, v in i.items() if k != "config"}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UsageError('the prompt is empty: give some text to continue, e.g. --prompt "Once upon a time"')
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model, tokenizer = load_causal_lm(args.model)
    prompt = args.prompt
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and inputs.input_ids.shape[1] + args.max_new_tokens > limit:
        raise UsageError(f"{inputs.input_ids.shape[1]} prompt tokens + --max-new-tokens {args.max_new_tokens} exceed "
                         f"{args.model}'s context of {limit} tokens: shorten the prompt or generate fewer tokens")
    start = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    new_tokens = output[0, inputs.input_ids.shape[1]:]
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    result = {"model": args.model, "prompt": args.prompt, "text": text,
              "new_tokens": len(new_tokens), "seconds": seconds}
    emit(result, args.json, lambda r: r["text"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="pretrained language models: embedded, local, Hugging Face",
                            description="Models are named by an embedded name "
                                        f"({', '.join(EMBEDDED)}), a local folder, or a Hugging Face id.")
    models_sub = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    p = models_sub.add_parser("list", help="the embedded models")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = models_sub.add_parser("info", help="architecture of a model (no weights loaded)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name or folder (default: {DEFAULT_MODEL})")
    add_json_flag(p)
    p.set_defaults(func=_info)

    p = models_sub.add_parser("generate", help="greedy generation from a plain (uncompressed) model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name or folder (default: {DEFAULT_MODEL})")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default: 40)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_json_flag(p)
    p.set_defaults(func=_generate)
