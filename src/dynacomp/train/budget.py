"""How long a run trains: ``TrainConfig.steps``, or a compute budget that replaces it.

``budget_flops``: the run stops once the FLOPs the task counts (the ``flops`` entry of its loss
metrics, summed over micro-batches and ranks) reach the budget. Where the cost of a step drifts
(boundaries learned during training) no step count can be fixed in advance, so the decay after
warm-up is counted in FLOPs: its progress before a step is ``(F - F_w) / (budget - F_w)``, with
``F`` the FLOPs of the steps taken and ``F_w`` those of the warm-up steps. At a constant cost per
step this is exactly the schedule of ``steps = budget / cost``; either way a run stopped by its
budget has finished its decay. The last step overshoots the budget by less than its own cost.

``budget_minutes``: the step count is fixed once the throughput is measured, over
``THROUGHPUT_STEPS`` steps after the first one this process runs (which pays one-off costs), as
``budget / seconds per step`` (checkpoint writes and start-up are not in the timing). Until then
the learning rate is the warm-up's, or the peak past the warm-up.

The FLOPs counted and the measured seconds per step are kept in checkpoints, so a resumed run
follows the schedule of an uninterrupted one exactly; only a run killed before its throughput was
measured measures it again.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from dynacomp.train.distributed import broadcast_from_main
from dynacomp.train.schedule import decay_progress, lr_at

THROUGHPUT_STEPS = 10


@dataclass
class RunLength:
    config: Any                              # the TrainConfig
    flops: int = 0                           # counted by the steps taken, all ranks
    warmup_flops: int | None = None          # counted by the warm-up steps, once they are done
    seconds_per_step: float | None = None    # measured for a time budget
    _timed: list[float] = field(default_factory=list)   # this process's timed steps, until measured

    def __post_init__(self) -> None:
        if self.config.warmup_steps == 0:
            self.warmup_flops = 0

    @property
    def steps(self) -> int | None:
        """The run's step count: ``config.steps``, or fixed by a time budget; None under a FLOP
        budget, or while the throughput is being measured."""
        config = self.config
        if config.budget_flops:
            return None
        if config.budget_minutes:
            return None if self.seconds_per_step is None else int(config.budget_minutes * 60 / self.seconds_per_step)
        return config.steps

    def lr_multiplier(self, step: int) -> float:
        """``lr_at`` for the step about to be taken, its decay spanning the budget."""
        config = self.config
        if config.budget_flops:
            progress = 0.0 if self.warmup_flops is None else decay_progress(self.flops, self.warmup_flops,
                                                                            config.budget_flops)
        elif self.steps is None:
            progress = 0.0   # a time budget, still measuring the throughput
        else:
            progress = decay_progress(step, config.warmup_steps, self.steps)
        return lr_at(step, config, progress)

    def done(self, step: int) -> bool:
        if self.config.budget_flops:
            return self.flops >= self.config.budget_flops
        return self.steps is not None and step >= self.steps

    def count(self, step: int, flops: int, seconds: float) -> None:
        """Record a finished step: ``step`` steps are now done, the last one cost ``flops`` and ``seconds``."""
        self.flops += flops
        if step == self.config.warmup_steps:
            self.warmup_flops = self.flops
        if self.config.budget_minutes and self.seconds_per_step is None:
            self._timed.append(seconds)
            if len(self._timed) > THROUGHPUT_STEPS:
                # every rank reaches this at the same step, and takes rank 0's measurement
                self.seconds_per_step = broadcast_from_main(statistics.mean(self._timed[1:]))

    def total_text(self) -> str:
        """The step count for messages, or how much of the budget is spent where it is not known yet."""
        if self.config.budget_flops:
            return f"? ({self.flops / self.config.budget_flops:.1%} of {self.config.budget_flops:.3g} FLOPs spent)"
        return "? (measuring throughput)" if self.steps is None else str(self.steps)

    def state_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "warmup_flops": self.warmup_flops, "seconds_per_step": self.seconds_per_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flops, self.warmup_flops = state["flops"], state["warmup_flops"]
        self.seconds_per_step = state["seconds_per_step"]
