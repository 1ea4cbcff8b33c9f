"""The VQ-VAE: a convolutional encoder over log-mel frames, a vector quantiser, a convolutional
decoder that reconstructs the frames from the codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynacomp.config import field, require_positive
from dynacomp.nn import VectorQuantizer, VQConfig


@dataclass
class VQVAEConfig:
    """The model and the batches it trains on."""

    n_mels: int = field(80, help="log-mel bands per 10 ms frame")
    hidden: int = field(128, help="channels of the encoder and decoder convolutions")
    layers: int = field(3, help="convolutions (kernel 3) in the encoder and in the decoder")
    latent_dim: int = field(64, help="size of the vectors the quantiser sees")
    crop_frames: int = field(128, help="frames in each training crop")
    batch_size: int = field(16, help="crops per micro-batch, over all ranks (a step takes --grad-accum of them)")

    def __post_init__(self) -> None:
        require_positive(self, "n_mels", "hidden", "layers", "latent_dim", "crop_frames", "batch_size")


class ConvStack(nn.Module):
    """``layers`` same-padded kernel-3 convolutions with ReLU between, then a 1x1 output
    convolution. Padded frames are zeroed after every layer, so a padded batch computes what
    each utterance alone would."""

    def __init__(self, inp: int, hidden: int, out: int, layers: int) -> None:
        super().__init__()
        sizes = [inp] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, padding=1) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Conv1d(hidden, out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, T, inp)``, ``mask (B, T)`` -> ``(B, T, out)``."""
        keep = mask[:, None, :].to(x.dtype)
        h = x.transpose(1, 2) * keep
        for conv in self.convs:
            h = torch.relu(conv(h)) * keep
        return (self.out(h) * keep).transpose(1, 2)


class VQVAE(nn.Module):
    """``(reconstruction, indices, vq_loss, quantized) = model(x, mask)`` on log-mels ``(B, T, n_mels)``.

    ``quantizer`` is any module with the ``VectorQuantizer`` call signature (e.g. one from
    vector-quantize-pytorch); by default a ``VectorQuantizer`` built from ``vq``.
    """

    def __init__(self, config: VQVAEConfig, vq: VQConfig | None = None, quantizer: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvStack(config.n_mels, config.hidden, config.latent_dim, config.layers)
        if quantizer is None:
            quantizer = VectorQuantizer.from_config(config.latent_dim, vq or VQConfig())
        self.vq = quantizer
        self.decoder = ConvStack(config.latent_dim, config.hidden, config.n_mels, config.layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``reconstruction (B, T, n_mels)``, ``indices (B, T)`` (-1 on padding), the quantiser's
        loss and ``quantized (B, T, latent_dim)``, the decoder's input."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        quantized, indices, vq_loss = self.vq(self.encoder(x, mask), mask=mask)
        return self.decoder(quantized, mask), indices, vq_loss, quantized
