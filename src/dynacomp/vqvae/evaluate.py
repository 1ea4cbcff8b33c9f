"""What a trained VQ-VAE is worth on held-out voices: reconstruction error, codebook usage, and
how much the codes say about the phones.

Phone information is measured three ways: *purity* (each code labelled with its most frequent
test phone: an upper bound), *code accuracy* (each code labelled with its most frequent phone
in the training split, then scored on test frames) and a *linear probe* (softmax regression from
the quantised vectors, trained on training frames, scored on test frames whose phone occurs in
training; ``dynacomp.metrics.probe``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynacomp.config import field, require_positive
from dynacomp.console import progress
from dynacomp.metrics.codebook import code_counts, codebook_stats
from dynacomp.metrics.probe import ProbeConfig, linear_probe
from dynacomp.vqvae.features import SpeechFrames
from dynacomp.vqvae.model import VQVAE
from dynacomp.vqvae.recipe import pad_batch


@dataclass
class EvalConfig:
    """How ``evaluate`` runs; the probe's own options are ``dynacomp.metrics.probe.ProbeConfig``."""

    batch_size: int = field(16, help="utterances per forward pass")
    probe_frames: int = field(20000, help="training frames (a seeded sample) the linear probe learns from")
    probe_sample_seed: int = field(0, help="seed of that sample")

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "probe_frames")


@dataclass
class Encoded:
    """Every frame of a split through the model: squared error summed over bands, code, vector."""

    sq_error: torch.Tensor   # (N,)
    indices: torch.Tensor    # (N,) long
    quantized: torch.Tensor  # (N, latent_dim)


@torch.no_grad()
def encode(model: VQVAE, frames: SpeechFrames, batch_size: int = 16) -> Encoded:
    """Run ``model`` (in eval mode) over all utterances of ``frames``, in padded batches."""
    model.eval()
    errors, indices, vectors = [], [], []
    for start in progress(range(0, len(frames.features), batch_size), desc="encoding", unit="batch"):
        x, mask = pad_batch(frames.features[start:start + batch_size])
        reconstruction, idx, _, quantized = model(x, mask)
        errors.append(((reconstruction - x) ** 2).sum(-1)[mask])
        indices.append(idx[mask])
        vectors.append(quantized[mask])
    return Encoded(torch.cat(errors), torch.cat(indices), torch.cat(vectors))


def _frame_phones(frames: SpeechFrames) -> list[str]:
    return [p for phones in frames.phones for p in phones]


def _phone_ids(frames: SpeechFrames, vocabulary: dict[str, int]) -> torch.Tensor:
    """Phone ids of all frames; phones missing from ``vocabulary`` get ``len(vocabulary)`` (never predicted right)."""
    return torch.tensor([vocabulary.get(p, len(vocabulary)) for p in _frame_phones(frames)])


def code_phone_table(indices: torch.Tensor, phones: torch.Tensor, codebook_size: int, n_phones: int) -> torch.Tensor:
    """``(K, P)`` counts of (code, phone) pairs; frames without a code (-1) are left out."""
    keep = indices >= 0
    joint = indices[keep] * n_phones + phones[keep]
    return torch.bincount(joint, minlength=codebook_size * n_phones).reshape(codebook_size, n_phones)


def purity(table: torch.Tensor) -> float:
    """Share of frames whose phone is the most frequent one of their code."""
    return float(table.max(1).values.sum() / table.sum().clamp_min(1))


def evaluate(model: VQVAE, test: SpeechFrames, train: SpeechFrames, config: EvalConfig | None = None,
             probe: ProbeConfig | None = None) -> dict[str, float]:
    """Metrics on ``test`` (normalised frames of held-out voices); ``train`` (normalised, the
    training split) supplies the code labels and the probe's training frames."""
    config = config or EvalConfig()
    k = model.vq.codebook_size
    test_out, train_out = encode(model, test, config.batch_size), encode(model, train, config.batch_size)
    train_labels = _frame_phones(train)
    vocabulary = {p: i for i, p in enumerate(sorted(set(train_labels)))}
    n_phones = len(vocabulary) + 1   # the last id: a test phone never seen in training
    test_phones, train_phones = _phone_ids(test, vocabulary), _phone_ids(train, vocabulary)

    test_table = code_phone_table(test_out.indices, test_phones, k, n_phones)
    labels = code_phone_table(train_out.indices, train_phones, k, n_phones).argmax(1)  # unseen codes: phone 0
    coded = test_out.indices >= 0
    code_accuracy = float((labels[test_out.indices[coded]] == test_phones[coded]).float().mean())

    g = torch.Generator().manual_seed(config.probe_sample_seed)
    sample = torch.randperm(len(train_phones), generator=g)[:config.probe_frames].tolist()
    probed = linear_probe(train_out.quantized[sample], [train_labels[i] for i in sample], test_out.quantized,
                          _frame_phones(test), probe)

    test_stats = codebook_stats(code_counts(test_out.indices, k))
    train_stats = codebook_stats(code_counts(train_out.indices, k))
    return {"recon_mse": float(test_out.sq_error.sum() / (len(test_out.sq_error) * test.features[0].shape[1])),
            **test_stats, "train_usage": train_stats["usage"], "train_dead_codes": train_stats["dead_codes"],
            "purity": purity(test_table), "code_accuracy": code_accuracy, "probe_accuracy": probed["accuracy"],
            "test_frames": len(test_out.indices), "codebook_size": k}
