"""DMC retrofitting: teach a pretrained LLM to merge its own KV cache (arXiv 2403.09636).

The recipe of the official code, in three stages; each is one ``dynacomp.train.train`` run in its
own subfolder of OUT, so a killed run resumes where it stopped (a finished stage only reloads
its final weights):

1. ``zero_out``: the plain model, with the channels DMC repurposes (the last channel of every
   q and k head) scaled by ``max(0, 1 - step / (0.8 steps))``; afterwards their projection rows
   are zeroed (``channels.zero``), so every decision starts at alpha = sigmoid(-bias).
2. ``retrofit``: the DMC model with Gumbel-sigmoid decisions, the target ratio rising linearly
   from 1 to ``target_cr``; constant learning rate.
3. ``finetune``: the target ratio fixed, cosine decay of the learning rate to a tenth.

Loss: the LM loss plus ``aux_weight * mean_b max(0, (1 - 1/CR_target) - mean alpha_b)``, alpha of
sequence b averaged over its tokens, the KV heads and the layers (one-sided: compressing more
than asked is never penalised). Beyond the paper, each optional: distillation from the frozen
original model (``distill``), training only the attention or q/k projections (``train_params``),
shorter sequences early (``short_seq_len``).

OUT then holds ``model/`` (the DMC checkpoint, ``dynacomp.dmc.load``), ``report.json`` (base and
DMC perplexity on the test split, realised ratios) and ``cr_heatmap.png`` (layer x head ratios).
Perplexity is measured as the model generates: every evaluation window is prefilled through a
``DMCCache`` with hard decisions, which gives exactly the logits of token-by-token decoding.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynacomp.config import to_dict
from dynacomp.dmc.modeling import channels
from dynacomp.dmc.modeling.convert import convert, load, save
from dynacomp.dmc.retrofit.config import STAGES, RetrofitConfig
from dynacomp.dmc.retrofit.task import RetrofitTask
from dynacomp.io import figure, read_text, write_json
from dynacomp.metrics.perplexity import perplexity
from dynacomp.models import DEFAULT_MODEL, resolve
from dynacomp.train import is_main_process, load_weights, train

# ------------------------------------------------------------------------------------------ data

SPLIT_FRACTIONS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}


MIX_PIECE = 4096   # characters: a mixture alternates its corpora in pieces this long


def load_text(data: str, split: str) -> str:
    """A split of a corpus name, of a mixture ``name+name+...`` (its corpora's splits alternating in
    pieces of ``MIX_PIECE`` characters, so any prefix holds all of them), or of a text file cut
    90/5/5 % by position."""
    if "+" in data:
        texts = [load_text(name, split) for name in data.split("+")]
        pieces = [[t[i:i + MIX_PIECE] for i in range(0, len(t), MIX_PIECE)] for t in texts]
        return "".join(piece for group in itertools.zip_longest(*pieces, fillvalue="") for piece in group)
    path = Path(data).expanduser()
    if path.is_file() or path.suffix or path.parent != Path("."):      # a path, not a corpus name
        text = read_text(path, "--data file")
        low, high = SPLIT_FRACTIONS[split]
        return text[int(low * len(text)):int(high * len(text))]
    from dynacomp.data.text import load_split
    return load_split(data, split)


def tokenize(tokenizer, text: str, limit: int | None = None) -> Tensor:
    """(N,) token ids of ``text`` (the first ``limit`` tokens when given)."""
    if limit is not None:
        text = text[:limit * 8]  # a token is far shorter than 8 characters in any tokenizer used here
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    if limit is not None and ids.numel() < limit:
        raise ValueError(f"the text has only {ids.numel()} tokens, {limit} were asked for")
    return ids[:limit]


# ------------------------------------------------------------------------------------------ the recipe

def load_model(name: str) -> nn.Module:
    """The pretrained model alone, fp32, eval mode (``load_causal_lm`` without the tokenizer,
    which takes longer to read than a small model)."""
    return AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32).eval()


def _stage_model(config: RetrofitConfig, stage: str, previous: Path | None) -> nn.Module:
    """A fresh model for ``stage`` with the previous stage's final weights (fresh, so no module
    is ever wrapped for DDP / FSDP twice)."""
    if config.init:
        model = load(config.init)[0]       # converted: an eviction probe is part of its weights
        # Its decision channels hold the folded scale; training applies the scale again.
        channels.fold_scale(model, 1 / config.decision_scale, config.policy)
    else:
        model = load_model(config.model)
    if stage != "zero_out":
        convert(model, config.dmc_config())
    if previous is not None:
        load_weights(model, previous)
    if stage == "retrofit" and not config.init:
        channels.zero(model, config.policy)
    return model.train()


def slot_counts(cache) -> tuple[int, Tensor]:
    """(tokens, slots (layers, H)) of a DMCCache, slots summed over its sequences."""
    return int(cache.tokens.sum()), cache.slots().sum(1)


def read_through_caches(model: nn.Module, tokens: Tensor, context: int, batch_size: int) -> tuple[dict, int, Tensor]:
    """DMC perplexity of ``tokens`` read window by window through fresh caches (hard decisions),
    with the tokens seen and the slots (layers, H) the caches hold."""
    caches = []

    def fresh_cache():
        caches.append(model.new_cache())
        return caches[-1]

    model.eval()
    result = perplexity(model, tokens, context, batch_size=batch_size, cache_factory=fresh_cache)
    counts = [slot_counts(c) for c in caches]
    return result, sum(t for t, _ in counts), sum(s for _, s in counts).double()


def evaluate(model: nn.Module, base: nn.Module, tokens: Tensor, context: int, batch_size: int) -> dict:
    """Base and DMC perplexity on the same windows, the DMC one through real caches; ratios."""
    dmc, seen, slots = read_through_caches(model, tokens, context, batch_size)
    plain = perplexity(base, tokens, context, batch_size=batch_size)
    return {
        "base_perplexity": plain["perplexity"], "dmc_perplexity": dmc["perplexity"],
        "perplexity_ratio": dmc["perplexity"] / plain["perplexity"],
        "compression_ratio": seen * slots.numel() / float(slots.sum()),
        "per_layer_head": (seen / slots).tolist(),
        "eval": {"split": "test", "scored_tokens": dmc["tokens"], "context": context, "windows": dmc["windows"]},
    }


@torch.no_grad()
def calibrate_threshold(model: nn.Module, tokens: Tensor, target_cr: float, context: int, batch_size: int,
                        steps: int = 8, bound: float = 4.0) -> tuple[float, float]:
    """The largest decision threshold in [-bound, bound] at which ``model`` (a DMC model) realises
    at least ``target_cr`` on ``tokens``, by bisection (the ratio falls as the threshold rises).
    Sets it on the model and returns (threshold, realised ratio)."""
    def ratio_at(threshold: float) -> float:
        convert(model, replace(model.dmc_config, decision_threshold=threshold))
        _, seen, slots = read_through_caches(model, tokens, context, batch_size)
        return seen * slots.numel() / float(slots.sum())

    low, high = -bound, bound
    low_ratio = ratio_at(low)
    if low_ratio < target_cr:
        raise ValueError(f"even at threshold {low} the model realises less than ratio {target_cr}")
    for _ in range(steps):
        middle = (low + high) / 2
        ratio = ratio_at(middle)
        if ratio >= target_cr:
            low, low_ratio = middle, ratio
        else:
            high = middle
    convert(model, replace(model.dmc_config, decision_threshold=low))   # the last one tried may be ``high``
    return low, low_ratio


def calibrate_hold(model: nn.Module, tokens: Tensor, target_cr: float, context: int, batch_size: int,
                   **bisection) -> tuple[tuple[float, ...], float]:
    """A DMS model's per-layer shares of kept tokens at the threshold that realises ``target_cr`` on
    ``tokens`` (``calibrate_threshold``), set as its ``hold_keep``, so that it keeps those shares, and
    so about that ratio, on any text. Returns (shares, realised ratio on ``tokens``)."""
    _, ratio = calibrate_threshold(model, tokens, target_cr, context, batch_size, **bisection)
    result, _, slots = read_through_caches(model, tokens, context, batch_size)
    window = model.dmc_config.eviction_window
    per_row = slots.mean(1) / result["windows"]         # (layers,) slots a row holds at the end of a window
    # A row holds its last `window` tokens and the kept share of those that left the window.
    keep = tuple(((per_row - window) / (context - window)).clamp(1 / context, 1.0).tolist())
    convert(model, replace(model.dmc_config, hold_keep=keep))
    return keep, ratio


def plot_cr_heatmap(per_layer_head: list[list[float]], path: Path, title: str) -> None:
    """Layer x KV-head compression ratios as a heat map (PNG), written atomically."""
    from matplotlib.colors import LogNorm

    ratios = torch.tensor(per_layer_head).numpy()
    layers, heads = ratios.shape
    with figure(path, figsize=(1.6 + 0.7 * heads, 1.4 + 0.22 * layers)) as (fig, ax):
        # Log colours: heads range from 1 (never merge) to tens.
        norm = LogNorm(vmin=1.0, vmax=max(float(ratios.max()), 1.01))
        image = ax.imshow(ratios, cmap="viridis", norm=norm, aspect="auto", origin="upper")
        if layers * heads <= 200:
            middle = math.sqrt(norm.vmax)
            for (i, j), value in zip(((i, j) for i in range(layers) for j in range(heads)), ratios.flatten().tolist()):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if value < middle else "black")
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(heads))
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label="compression ratio (tokens per slot)")


def write_outputs(model: nn.Module, tokenizer, report: dict, out_dir: Path, title: str, t0: float) -> dict:
    """OUT/model (the checkpoint), OUT/cr_heatmap.png and OUT/report.json (with the wall time since
    ``t0``) of a retrofit or a calibration; returns the report."""
    save(model, out_dir / "model", tokenizer)
    plot_cr_heatmap(report["per_layer_head"], out_dir / "cr_heatmap.png",
                    f"{title}: realised {report['compression_ratio']:.2f}, ppl x{report['perplexity_ratio']:.3f}")
    report["wall_time_s"] = time.perf_counter() - t0
    write_json(out_dir / "report.json", report)
    return report


def retrofit(config: RetrofitConfig, out_dir: str | Path, command: str | None = None) -> dict | None:
    """Run the three stages into ``out_dir`` (resuming what is there), evaluate, write the outputs.

    Returns the report on the main process, None on the others (under torchrun).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve(config.model))
    tokens = tokenize(tokenizer, load_text(config.data, "train"))
    teacher = None
    if config.distill > 0:
        teacher = load_model(config.model)
        teacher.requires_grad_(False)

    stages, previous = {}, None
    for stage in STAGES:
        steps = config.stage_steps(stage)
        if steps == 0:
            continue
        if is_main_process():
            print(f"dynacomp dmc retrofit: stage {stage} ({steps} steps)", file=sys.stderr)
        model = _stage_model(config, stage, previous)
        task = RetrofitTask(model, tokens, config, stage, teacher)
        result = train(task, config.train_config(stage), out_dir / stage)
        # wall_time_s: of this call (a stage finished before a resume only reloads its weights).
        stages[stage] = {"steps": steps, "wall_time_s": result.wall_time, "last_metrics": result.metrics}
        previous = result.checkpoint
    if not is_main_process():
        return None

    model = _stage_model(config, "finetune", previous).eval().to(config.device)
    channels.fold_scale(model, config.decision_scale, config.policy)
    base = load_model(config.model).to(config.device)
    test = tokenize(tokenizer, load_text(config.data, "test"), config.eval_tokens)
    context = config.eval_context or config.seq_len
    train_time = time.perf_counter() - t0
    report = {
        "model": config.model, "data": config.data, "target_cr": config.target_cr,
        **evaluate(model, base, test, context, config.eval_batch),
        "tokens_trained": config.tokens_trained(),
        "train_wall_time_s": train_time,
        "stages": stages,
        "config": to_dict(config),
        "command": command or shlex.join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
    }
    title = f"{Path(config.model).name}, target {config.target_cr:g}"
    return write_outputs(model, tokenizer, report, out_dir, title, t0)


def calibrate(checkpoint: str | Path, out_dir: str | Path, target_cr: float, base: str = DEFAULT_MODEL,
              data: str = "english", tokens: int = 4096, context: int = 512, eval_tokens: int = 16384,
              batch_size: int = 4, command: str | None = None, device: str = "cpu", hold: bool = False) -> dict:
    """Tune a retrofitted checkpoint's decision threshold on the validation split so that it
    realises ``target_cr`` (training aims the soft ratio at the target; hard decisions land a little
    off it), or with ``hold`` the per-layer shares of kept tokens (``calibrate_hold``), save the
    result to ``out_dir/model`` and report it on the test split like ``retrofit``; every evaluation
    on ``device``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    model, tokenizer = load(checkpoint)
    model.to(device)
    validation = tokenize(tokenizer, load_text(data, "validation"), tokens)
    setting, realised = (calibrate_hold if hold else calibrate_threshold)(model, validation, target_cr, context,
                                                                           batch_size)
    test = tokenize(tokenizer, load_text(data, "test"), eval_tokens)
    report = {"model": str(checkpoint), "base": base, "data": data, "target_cr": target_cr,
              "decision_threshold": model.dmc_config.decision_threshold, "hold_keep": model.dmc_config.hold_keep,
              "validation_ratio": realised,
              **evaluate(model, load_model(base).to(device), test, context, batch_size),
              "command": command or shlex.join(sys.argv)}
    held = f"kept shares {min(setting):.2f}-{max(setting):.2f}" if hold else f"threshold {setting:.3f}"
    return write_outputs(model, tokenizer, report, out_dir, held, t0)


# ------------------------------------------------------------------------------------------ demo

DEMO_CONFIG = RetrofitConfig(target_cr=1.5, seq_len=128, batch_size=2, zero_out_steps=2, retrofit_steps=12,
                             finetune_steps=4, lr=3e-4, eval_tokens=1024, eval_context=256, checkpoint_every=8)


def demo(out_dir: str | Path | None = None, **overrides) -> dict:
    """A short retrofit of the embedded model to ratio 1.5 (2-5 minutes on 2 CPU cores): the recipe
    end to end, not a useful model. The ratio is reached, but 18 steps of 256 tokens leave the
    perplexity ~20x the base (measured: 1.52, x23). Writes to ``out_dir`` (default: the dynacomp
    cache), which a second call resumes, so it only re-evaluates."""
    from dynacomp.io import cache_dir

    config = replace(DEMO_CONFIG, **overrides)
    return retrofit(config, out_dir or cache_dir("demo", "dmc_retrofit"), command="dynacomp demo")


def report_summary(report: dict) -> dict:
    """The headline numbers of a retrofit's (or a calibration's) report, for printing."""
    keys = ("model", "target_cr", "compression_ratio", "base_perplexity", "dmc_perplexity", "perplexity_ratio",
            "tokens_trained", "wall_time_s")
    return {k: report[k] for k in keys if k in report} | {"eval_tokens": report["eval"]["scored_tokens"]}
