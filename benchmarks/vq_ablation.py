"""The robust-VQ ablation on one data set and one codebook size, in one run:

    plain        no BatchNorm, codebook lr x1, no re-estimation (the paper's "vanilla")
    codebook_lr  BatchNorm, codebook lr x10
    reinit       BatchNorm, warm-up bypass, k-means re-estimation from the reservoir
    robust       BatchNorm, codebook lr x10 and re-estimation (the paper's recipe)
    robust_reseed  robust, then re-seeding of the underused codes to the end (dynacomp's default)
    vqtorch_lib  vector-quantize-pytorch's VectorQuantize: EMA codebook, k-means init on the
                 first batch, dead codes (EMA count < 2) replaced by batch vectors

Each variant trains the same VQ-VAE (same data order, steps and optimiser) once per seed and is
evaluated on the test voices; the table gives the mean over seeds. Writes RESULTS/vq_ablation.{json,md}
and RESULTS/vq_usage.png; the runs go to --out (an interrupted benchmark resumes them).

    python benchmarks/vq_ablation.py --data DIR [--steps 1500] [--codebook-size 512] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
from common import machine, repo_path

from dynacomp.io import write_json, write_text
from dynacomp.nn import VQConfig
from dynacomp.train import TrainConfig
from dynacomp.vqvae.evaluate import EvalConfig, evaluate
from dynacomp.vqvae.features import load_frames
from dynacomp.vqvae.model import VQVAEConfig
from dynacomp.vqvae.plot import plot_usage, read_metrics
from dynacomp.vqvae.recipe import train_vqvae

VARIANTS = {
    "plain": "no BatchNorm, codebook lr x1, no re-estimation",
    "codebook_lr": "BatchNorm, codebook lr x10",
    "reinit": "BatchNorm, warm-up + k-means re-estimation",
    "robust": "BatchNorm, codebook lr x10, warm-up + re-estimation",
    "robust_reseed": "robust, then re-seeding of underused codes",
    "vqtorch_lib": "vector-quantize-pytorch: EMA, k-means init, dead-code replacement",
}


def vq_config(variant: str, codebook_size: int, steps: int) -> VQConfig | None:
    """The variant's quantiser options; the schedule scales with the run: a warm-up and a
    re-estimation period of a tenth of it each, re-estimations of all codes during the first half,
    and for robust_reseed re-seeding of the underused codes up to the last period."""
    if variant == "vqtorch_lib":
        return None
    period = max(1, steps // 10)
    schedule = {"bypass_steps": period, "reestimate_every": period, "reestimate_until": steps // 2, "reseed_until": 0}
    no_schedule = {"bypass_steps": 0, "reestimate_every": 0}
    options = {
        "plain": {"batch_norm": False, "codebook_lr_mult": 1.0, **no_schedule},
        "codebook_lr": {"batch_norm": True, "codebook_lr_mult": 10.0, **no_schedule},
        "reinit": {"batch_norm": True, "codebook_lr_mult": 1.0, **schedule},
        "robust": {"batch_norm": True, "codebook_lr_mult": 10.0, **schedule},
        "robust_reseed": {"batch_norm": True, "codebook_lr_mult": 10.0, **schedule, "reseed_until": steps - period},
    }[variant]
    return VQConfig(codebook_size=codebook_size, **options)


def library_quantizer(dim: int, codebook_size: int) -> torch.nn.Module:
    from vector_quantize_pytorch import VectorQuantize

    # The library's own defaults (EMA decay 0.8, rotation trick) with its k-means init and
    # dead-code replacement switched on, and the same commitment weight as the other variants.
    return VectorQuantize(dim=dim, codebook_size=codebook_size, kmeans_init=True, threshold_ema_dead_code=2,
                          commitment_weight=VQConfig().commitment)


METRICS = ("usage", "perplexity", "dead_codes", "recon_mse", "purity", "code_accuracy", "probe_accuracy",
           "train_usage", "train_seconds")


def mean_over_seeds(runs: dict) -> dict:
    return {key: sum(run[key] for run in runs.values()) / len(runs) for key in METRICS}


def table(results: dict) -> str:
    head = ("| variant | what | usage (test) | usage per seed | perplexity | dead codes | recon MSE (test) | "
            "recon per seed | purity | code→phone acc. | probe acc. | train usage | train wall s* |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, r in results.items():
        m = r["mean"]

        def per_seed(key: str, digits: int, seeds=r["seeds"]) -> str:
            return " ".join(f"{run[key]:.{digits}f}" for run in seeds.values())

        rows.append(f"| {name} | {VARIANTS[name]} | {m['usage']:.3f} | {per_seed('usage', 3)} | "
                    f"{m['perplexity']:.1f} | {m['dead_codes']:.1f} | {m['recon_mse']:.4f} | "
                    f"{per_seed('recon_mse', 4)} | {m['purity']:.3f} | {m['code_accuracy']:.3f} | "
                    f"{m['probe_accuracy']:.3f} | {m['train_usage']:.3f} | {m['train_seconds']:.0f} |")
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="speech set (`dynacomp data speech --hours 0.5`)")
    parser.add_argument("--out", type=Path, default=Path("runs/vq_ablation"), help="run folders")
    parser.add_argument("--results", type=Path, default=Path("docs/results"), help="where the table and plot go")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--codebook-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=VQVAEConfig().hidden)
    parser.add_argument("--batch-size", type=int, default=VQVAEConfig().batch_size)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one training run per seed and variant")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/vq_ablation.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.UTC)
    host = machine()

    model_config = VQVAEConfig(hidden=args.hidden, batch_size=args.batch_size)
    train_config = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=min(100, args.steps // 10), weight_decay=0.0,
                               grad_clip=10.0, log_every=10, checkpoint_every=max(1, args.steps // 4))
    frames = {split: load_frames(args.data, split, model_config.n_mels) for split in ("train", "test")}
    mean, std = frames["train"].stats()
    test, train = frames["test"].normalized(mean, std), frames["train"].normalized(mean, std)

    results, curves = {}, {}
    for variant in args.variants:
        vq = vq_config(variant, args.codebook_size, args.steps)
        runs = {}
        for seed in args.seeds:
            print(f"== {variant} seed {seed}: {VARIANTS[variant]}", file=sys.stderr)
            out = args.out / f"{variant}_seed{seed}"
            quantizer = library_quantizer(model_config.latent_dim, args.codebook_size) if variant == "vqtorch_lib" else None
            t0 = time.perf_counter()
            model, result = train_vqvae(args.data, out, model_config, vq, dataclasses.replace(train_config, seed=seed),
                                        frames=frames["train"], quantizer=quantizer)
            train_seconds = result.metrics.get("elapsed_s", time.perf_counter() - t0)
            metrics = evaluate(model, test, train, EvalConfig())
            runs[seed] = {**metrics, "train_seconds": train_seconds, "final_train": result.metrics}
            if seed == args.seeds[0]:
                curves[variant] = read_metrics(out)
            print(f"   usage {metrics['usage']:.3f}  recon {metrics['recon_mse']:.4f}  "
                  f"probe {metrics['probe_accuracy']:.3f}  ({train_seconds:.0f} s)", file=sys.stderr)
        results[variant] = {"mean": mean_over_seeds(runs), "seeds": runs, "vq_config": vars(vq) if vq else None}

    finished = datetime.datetime.now(datetime.UTC)
    note = f"{command}\n{host}; {started:%Y-%m-%d %H:%M} UTC; {args.steps} steps, K={args.codebook_size}"
    write_json(args.results / "vq_ablation.json", {
        "command": command, "machine": host, "started": started.isoformat(), "finished": finished.isoformat(),
        "data": repo_path(args.data), "model": vars(model_config), "train": vars(train_config) | {"seed": args.seeds},
        "codebook_size": args.codebook_size, "results": results})
    write_text(args.results / "vq_ablation.md",
               f"# VQ ablation (generated)\n\nCommand: `{command}`  \nMachine: {host} (a shared machine: "
               "times are noisy)  \n"
               f"Date: {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC  \n"
               f"Codebook K = {args.codebook_size}, {args.steps} steps of {model_config.batch_size} x "
               f"{model_config.crop_frames} frames, seeds {' '.join(map(str, args.seeds))} (the table gives means); "
               "test split = held-out voices.\n\n" + table(results) +
               "\n\\* wall time of the training run (a run already complete in --out is resumed, not retrained); "
               "on a shared machine, so not comparable between variants.\n")
    plot_usage(curves, args.results / "vq_usage.png", note)
    print(table(results))


if __name__ == "__main__":
    main()
