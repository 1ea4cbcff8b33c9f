"""A vector quantiser whose codebook stays alive: the robust-VQ recipe (Łańcucki et al., 2020).

``VectorQuantizer(dim, codebook_size, **options)`` maps each vector to its nearest codeword and
returns ``(quantized, indices, loss)``, with the straight-through estimator for the encoder and a
commitment loss. Plain VQ lets most codes die: the encoder's outputs drift away from a randomly
placed codebook and only a few codes are ever nearest. The paper's remedies, each an option:

- BatchNorm (and an optional projection) before quantisation, so inputs have a fixed scale;
- a raised learning rate for a gradient-trained codebook (``param_groups`` gives it its own group);
- data-dependent (re-)initialisation: a warm-up that bypasses the quantiser, a reservoir sample of
  recent inputs, and k-means++ then k-means on it every ``reestimate_every`` steps, replacing all
  codes (up to ``reestimate_until``).

Beyond the paper, a second phase up to ``reseed_until`` re-seeds on the same beat only the codes
chosen less than ``reseed_below`` times the mean, keeping the others: k-means leaves cluster sizes
uneven and the encoder keeps moving after the last full re-estimation, and re-seeding the
underused codes where the reservoir is worst covered evens their use out without moving the rest.

The schedule runs from ``on_step_start(step)``, which a training task calls before each step. In
DDP every rank's reservoir goes to rank 0, which re-estimates and broadcasts the codebook; code
counts (and EMA statistics) are summed over ranks in ``forward``, so all ranks hold one codebook.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dynacomp.config import field
from dynacomp.nn.kmeans import assign, kmeans, kmeans_plus_plus


@dataclass
class VQConfig:
    """Every option of ``VectorQuantizer``. The defaults are the paper's recipe (BatchNorm, β = 0.25,
    codebook lr x10, warm-up and re-estimation from a 20,480-vector reservoir), with a schedule in
    steps sized for a run of about 1000 steps: scale it with the run."""

    codebook_size: int = field(512, help="number of codewords K")
    codebook_dim: int = field(0, help="project inputs to this size before quantising and back after (0: no projection)")
    batch_norm: bool = field(True, help="BatchNorm the inputs (valid frames only) before quantising")
    commitment: float = field(0.25, help="beta: weight of the commitment loss ||x - sg(q)||^2")
    update: Literal["gradient", "ema"] = field(
        "gradient", help="codebook learning: by gradient of ||sg(x) - q||^2, or by exponential moving averages")
    codebook_lr_mult: float = field(10.0, help="gradient update: the codebook's learning-rate multiplier")
    ema_decay: float = field(0.99, help="ema update: decay of the code counts and sums")
    bypass_steps: int = field(100, help="steps at the start that pass inputs through unquantised (warm-up)")
    reestimate_every: int = field(100, help="steps between k-means re-estimations of the codebook from the "
                                          "reservoir, from the end of the warm-up (0: never)")
    reestimate_until: int = field(500, help="last step that may re-estimate all codes (0: no limit)")
    reseed_until: int = field(900, help="after reestimate_until, last step that may re-seed the underused codes "
                                      "(0 or <= reestimate_until: no such phase)")
    reseed_below: float = field(0.5, help="a code chosen fewer times than this fraction of the mean code count "
                                        "since the last re-estimation is underused (0: only unused codes)")
    reservoir_size: int = field(20480, help="inputs kept by the reservoir sampler for re-estimation")
    kmeans_iters: int = field(50, help="Lloyd iterations after k-means++ seeding")

    def __post_init__(self) -> None:
        if self.codebook_size < 1 or self.reservoir_size < 0 or min(self.bypass_steps, self.reestimate_every) < 0:
            raise ValueError("VQConfig: codebook_size must be >= 1; reservoir_size, bypass_steps and "
                             "reestimate_every >= 0")
        if self.reseed_below < 0:
            raise ValueError("VQConfig.reseed_below must be >= 0")
        if self.update not in ("gradient", "ema"):
            raise ValueError(f"VQConfig.update is 'gradient' or 'ema', not {self.update!r}")


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantiser: ``(quantized, indices, loss) = vq(x, mask)``.

    ``options`` are the fields of ``VQConfig`` (``VectorQuantizer.from_config`` takes one whole).
    ``self.codebook (K, D_c)`` is a parameter in ``gradient`` mode and a buffer in ``ema`` mode,
    with ``D_c = codebook_dim or dim``. Call ``on_step_start(step)`` before each training step for
    the warm-up and the re-estimations; without it the module quantises from the first call and
    re-estimates only when ``reestimate()`` is called.
    """

    # Training strategies it works under: re-estimation runs k-means on rank 0 over the whole
    # codebook and broadcasts it, which FSDP's shards cannot take. Tasks pass this on to the loop.
    strategies = ("single", "ddp")

    def __init__(self, dim: int, codebook_size: int, **options: Any) -> None:
        super().__init__()
        self.config = config = VQConfig(codebook_size=codebook_size, **options)
        self.dim, self.codebook_size = dim, codebook_size
        code_dim = config.codebook_dim or dim
        self.norm = nn.BatchNorm1d(dim) if config.batch_norm else nn.Identity()
        self.project_in = nn.Linear(dim, code_dim) if config.codebook_dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if config.codebook_dim else nn.Identity()
        codebook = nn.init.xavier_uniform_(torch.empty(codebook_size, code_dim))
        if config.update == "gradient":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", codebook.clone())
        # How often each code was chosen since the last re-estimation: finds the underused ones.
        self.register_buffer("code_counts", torch.zeros(codebook_size, dtype=torch.long))
        self.bypass = False   # set by on_step_start: without the schedule, plain quantisation
        self.collect = config.reestimate_every > 0 and config.reservoir_size > 0
        self.reset_reservoir()

    @classmethod
    def from_config(cls, dim: int, config: VQConfig) -> VectorQuantizer:
        return cls(dim, **dataclasses.asdict(config))

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (..., dim)``, ``mask (...)`` bool with True on real frames (default: all).

        Returns ``quantized (..., dim)`` (zeros on padding; the continuous input, normalised and
        projected, during the warm-up bypass), ``indices (...)`` long (-1 on padding and in the
        bypass) and the scalar loss (commitment, plus the codebook term in gradient mode).
        """
        # Under bf16 autocast, distances in bf16 pick a code that is not the nearest for ~1 % of
        # vectors, and the reservoir and statistics must keep the codebook's dtype: quantise in it.
        with torch.autocast(x.device.type, enabled=False):
            return self._quantize(x.to(self.codebook.dtype), mask)

    def _quantize(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim)
        valid = None if mask is None else mask.reshape(-1).to(torch.bool)
        z = self.project_in(self.norm(flat if valid is None else flat[valid]))
        if self.training and self.collect:
            self._sample(z.detach())
        if self.bypass:
            chosen = torch.full(z.shape[:1], -1, dtype=torch.long, device=z.device)
            quantized, loss = z, z.new_zeros(())
        else:
            chosen = assign(z.detach(), self.codebook.detach())[0]
            codes = F.embedding(chosen, self.codebook)
            if self.training:
                self._count(z.detach(), chosen)
            loss = self._loss(z, codes)
            quantized = z + (codes - z).detach()    # straight-through: the encoder gets dL/dq
        quantized = self.project_out(quantized)
        if valid is None:
            return quantized.reshape(*lead, -1), chosen.reshape(lead), loss
        out = quantized.new_zeros(flat.shape[0], quantized.shape[1])
        out[valid] = quantized
        indices = torch.full((flat.shape[0],), -1, dtype=torch.long, device=x.device)
        indices[valid] = chosen
        return out.reshape(*lead, -1), indices.reshape(lead), loss

    def _loss(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if z.shape[0] == 0:   # all padding: zero, but with the codebook in the graph (DDP expects its gradient)
            return 0 * codes.sum()
        loss = self.config.commitment * F.mse_loss(z, codes.detach())
        if self.config.update == "gradient":
            loss = loss + F.mse_loss(codes, z.detach())
        return loss

    @torch.no_grad()
    def _count(self, z: torch.Tensor, chosen: torch.Tensor) -> None:
        """Add this batch to the code counts (and EMA statistics), summed over ranks."""
        counts = torch.bincount(chosen, minlength=self.codebook_size)
        sums = torch.zeros_like(self.codebook).index_add_(0, chosen, z) if self.config.update == "ema" else None
        if _world() > 1:
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.code_counts += counts
        if sums is not None:
            decay = self.config.ema_decay
            self.ema_count.mul_(decay).add_(counts.to(self.ema_count.dtype), alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n, eps = self.ema_count.sum(), 1e-5
            smoothed = (self.ema_count + eps) / (n + self.codebook_size * eps) * n   # Laplace: no division by 0
            self.codebook.copy_(self.ema_sum / smoothed[:, None])

    # ------------------------------------------------------------------ reservoir and re-estimation

    def reset_reservoir(self) -> None:
        self._reservoir: torch.Tensor | None = None
        self._filled = self._seen = 0

    @torch.no_grad()
    def _sample(self, z: torch.Tensor) -> None:
        """Reservoir sampling (Vitter's algorithm R): after ``n`` inputs each one is kept with
        probability ``size / n``, whatever the order; uses torch's global generator."""
        size = self.config.reservoir_size
        if self._reservoir is None:
            self._reservoir = z.new_empty(size, z.shape[1])
        take = min(size - self._filled, z.shape[0])
        self._reservoir[self._filled:self._filled + take] = z[:take]
        self._filled += take
        rest = z[take:]
        if len(rest):
            position = torch.arange(self._seen + take + 1, self._seen + z.shape[0] + 1, device=z.device)
            slot = (torch.rand(len(rest), device=z.device) * position).long()   # uniform in [0, position)
            keep = slot < size
            self._reservoir[slot[keep]] = rest[keep]
        self._seen += z.shape[0]

    def reservoir_state(self) -> dict[str, Any]:
        """The reservoir as plain tensors and ints, for a training task's checkpoint state."""
        filled = self._reservoir[:self._filled].cpu() if self._reservoir is not None else torch.zeros(0)
        return {"vectors": filled.clone(), "seen": self._seen}

    def load_reservoir_state(self, state: dict[str, Any]) -> None:
        self.reset_reservoir()
        vectors = state["vectors"]
        if len(vectors):
            device = self.codebook.device
            self._reservoir = torch.empty(self.config.reservoir_size, vectors.shape[1], device=device,
                                          dtype=self.codebook.dtype)
            self._reservoir[:len(vectors)] = vectors.to(device)
            self._filled = len(vectors)
        self._seen = state["seen"]

    def _gathered_reservoir(self) -> torch.Tensor:
        """Every rank's reservoir, concatenated (each rank gets all; only rank 0 uses them)."""
        width = self.codebook.shape[1]
        mine = self._reservoir[:self._filled] if self._reservoir is not None else self.codebook.new_zeros(0, width)
        if _world() == 1:
            return mine
        padded = mine.new_zeros(self.config.reservoir_size, width)
        padded[:len(mine)] = mine
        counts = [torch.zeros((), dtype=torch.long, device=mine.device) for _ in range(_world())]
        dist.all_gather(counts, torch.tensor(len(mine), device=mine.device))
        parts = [torch.empty_like(padded) for _ in range(_world())]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(n)] for p, n in zip(parts, counts)])

    @torch.no_grad()
    def reestimate(self, underused_only: bool = False) -> int:
        """Re-estimate the codebook by k-means on the reservoir (k-means++ seeding, then Lloyd):
        all codes, or with ``underused_only`` only the codes chosen less than ``reseed_below``
        times the mean (or never) since the last re-estimation, the others fixed. Resets the
        reservoir and the counts. Collective in DDP (call on every rank). Returns the number of
        codes replaced (0 with an empty reservoir)."""
        vectors = self._gathered_reservoir()
        replaced = 0
        if len(vectors):
            counts = self.code_counts.float()
            replace = (counts < max(self.config.reseed_below * counts.mean(), 1.0) if underused_only
                       else torch.ones(self.codebook_size, dtype=torch.bool, device=vectors.device))
            replaced = int(replace.sum())
            if replaced and (_world() == 1 or dist.get_rank() == 0):
                codebook = self.codebook.detach().clone()
                codebook[replace] = kmeans_plus_plus(vectors, replaced, fixed=codebook[~replace])
                self.codebook.data.copy_(kmeans(vectors, codebook, self.config.kmeans_iters, frozen=~replace)[0])
            if replaced and _world() > 1:
                dist.broadcast(self.codebook.data, src=0)
            if replaced and self.config.update == "ema":
                self.ema_count[replace] = 1.0
                self.ema_sum[replace] = self.codebook[replace]
        self.reset_reservoir()
        self.code_counts.zero_()
        return replaced

    def on_step_start(self, step: int) -> bool:
        """Run the schedule before training step ``step`` (0-based): the warm-up bypass, and at
        every ``reestimate_every``-th step from the end of the warm-up a re-estimation of all codes
        (up to ``reestimate_until``), then of the underused ones (up to ``reseed_until``). The
        reservoir is emptied on the same beat, also during the warm-up, so it holds the inputs of
        the last period. Returns True when codes were replaced (a caller may then reset optimiser
        moments that belong to the old codes)."""
        config = self.config
        self.bypass = step < config.bypass_steps
        if config.reestimate_every <= 0 or config.reservoir_size <= 0:
            return False
        open_ended = config.reestimate_until <= 0
        last = max(config.reestimate_until, config.reseed_until)
        self.collect = open_ended or step < last
        if (step - config.bypass_steps) % config.reestimate_every:
            return False
        if step >= config.bypass_steps and (open_ended or step <= last):
            underused_only = not open_ended and step > config.reestimate_until
            return self.reestimate(underused_only) > 0
        self.reset_reservoir()
        return False

    def param_groups(self) -> list[dict[str, Any]]:
        """The codebook's optimiser group (gradient mode): its lr multiplier, no weight decay,
        which would pull unused codes to the origin. Empty in EMA mode."""
        if self.config.update != "gradient":
            return []
        return [{"params": [self.codebook], "lr_mult": self.config.codebook_lr_mult, "weight_decay": 0.0}]
