"""DMCConfig: every DMC default, once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynacomp.config import config_from_dict, field, to_dict


@dataclass
class DMCConfig:
    policy: Literal["dmc", "dms"] = field(
        "dmc", help="what a KV head's learned decision does: dmc merges the token into its last slot (Nawrot et "
                    "al. 2024); dms marks it for eviction once it leaves a window of the last EVICTION_WINDOW tokens "
                    "(Łańcucki et al. 2025)")
    eviction_window: int = field(64, help="dms: tokens always kept (the last ones); a marked token is dropped "
                                          "when it leaves this window (the paper: 256-512 for long generations)")
    decision_bias: float = field(
        5.0, help="subtracted from the repurposed key channel to get the merge logit, and added to the "
                  "repurposed query channel for the importance; 5 as in the official code, so a zeroed "
                  "channel starts at alpha = sigmoid(-5) = 0.007 (almost always append)")
    temperature: float = field(0.1, help="Gumbel-sigmoid temperature of the training-time relaxation")
    window: int = field(12, help="a slot averages at most the last WINDOW tokens of its run (official: 12)")
    page_size: int = field(128, help="slots per cache page; pages are per (sequence, KV head). Larger pages "
                                     "mean fewer, larger attention calls, which decode faster on CPU "
                                     "(docs/results/dmc_benchmarks.md), and waste half a page per head on average")
    decision_threshold: float = field(
        0.0, help="hard decisions (inference) merge where the decision logit exceeds this; below 0 merges more. "
                  "Training never uses it: a retrofit's realised ratio can be tuned on held-out text afterwards "
                  "(dynacomp.dmc.retrofit.calibrate_threshold)")
    eviction_probe: bool = field(
        False, help="dms: read the eviction logits from an added linear probe of each layer's input (hidden size "
                    "-> KV heads) instead of a repurposed query channel: attention keeps every channel, so a "
                    "retrofit training only the probe (--train-params decisions) leaves the model the base model")
    sinks: int = field(0, help="tokens at the start of a sequence that are never merged (dmc) or evicted (dms): "
                                "attention sinks, which StreamingLLM and H2O keep; 0 as in the papers")
    hold_keep: tuple[float, ...] | None = field(
        None, help="dms: the share of tokens each layer keeps, held at inference on any text instead of comparing "
                   "logits to decision_threshold (one number per layer, or one for all): a layer evicts the tokens "
                   "whose eviction logits are in the top 1 - KEEP of its KV heads' last CONTROL_WINDOW logits "
                   "(causal, so prefill equals decoding). A row then holds about KEEP x (tokens - w) + w slots for "
                   "eviction window w. dmc.retrofit.calibrate_hold measures the shares on the training text. It "
                   "holds the ratio, at a price: a text whose tokens the model would keep loses them "
                   "(docs/results/dms.md)")
    keep_share: float | None = field(
        None, help="dms: the share of tokens each sequence keeps (outside the eviction window), held at inference "
                   "on any text: the threshold is re-set every CONTROL_BLOCK tokens to the quantile of the "
                   "sequence's own eviction logits over its last CONTROL_WINDOW tokens, every layer and head pooled "
                   "(decision_threshold until there are some). A sequence of T tokens then holds about "
                   "KEEP x (T - w) + w slots per row for eviction window w (dynacomp.dmc.cache.control)")
    control_block: int = field(64, help="dms with keep_share: tokens between threshold updates; longer forwards "
                                        "are cut into pieces this long, which keeps prefill exact")
    control_window: int = field(256, help="dms with hold_keep or keep_share: tokens whose logits set the "
                                          "threshold (kept per row or per sequence and counted in the cache's bytes)")
    force_cr: float | None = field(
        None, help="replace learned decisions by a fixed pattern giving this compression ratio in every "
                   "head (benchmarks, engine tests); None: learned decisions")
    query_chunk: int = field(256, help="queries per block in masked attention: memory O(chunk x length), "
                                       "never a dense length x length mask")

    def __post_init__(self) -> None:
        if self.eviction_window < 1:
            raise ValueError(f"eviction_window must be >= 1, got {self.eviction_window}")
        if self.hold_keep is not None and (self.policy != "dms" or not all(0 < k <= 1 for k in self.hold_keep)):
            raise ValueError(f"hold_keep holds DMS's shares of kept tokens, each in (0, 1]; got {self.hold_keep} "
                             f"with policy {self.policy}")
        if self.keep_share is not None and (self.policy != "dms" or not 0 < self.keep_share <= 1
                                            or self.hold_keep is not None):
            raise ValueError(f"keep_share holds DMS's share of kept tokens, in (0, 1], instead of hold_keep; got "
                             f"{self.keep_share} with policy {self.policy}")
        if self.control_block < 1:
            raise ValueError(f"control_block must be >= 1, got {self.control_block}")
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")
        if self.control_window < 2:
            raise ValueError(f"control_window must be >= 2, got {self.control_window}")
        if self.eviction_probe and self.policy != "dms":
            raise ValueError("eviction_probe is DMS's; DMC reads its decisions from the key and query channels")
        if self.policy == "dms" and self.force_cr is not None:
            raise ValueError("force_cr is a fixed merge pattern of DMC; DMS has no forced variant")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.force_cr is not None and self.force_cr < 1:
            raise ValueError(f"force_cr is a compression ratio and must be >= 1, got {self.force_cr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def save(self, path: Path, **extra) -> None:
        from dynacomp.io import write_json
        write_json(path, {**to_dict(self), **extra})

    @classmethod
    def load(cls, path: Path) -> tuple[DMCConfig, dict]:
        """The config and the extra keys stored beside it (e.g. the base model type)."""
        values = json.loads(Path(path).read_text())
        names = cls.__dataclass_fields__.keys()
        return (config_from_dict(cls, {k: v for k, v in values.items() if k in names}),
                {k: v for k, v in values.items() if k not in names})
