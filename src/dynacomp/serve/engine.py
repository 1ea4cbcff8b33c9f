"""The serving engine: continuous batching over a paged KV cache whose memory really shrinks.

One object owns the model and the cache (``Engine``); each ``step``:

1. admits waiting requests first come, first served, while the sequence cap, the step's token
   budget and the KV budget allow: every request, running or admitted, is counted with what it will
   still store, at its observed pages per token (the running requests' average for one that stored
   nothing yet, every token a slot while nothing is observed): the prompt tokens not yet prefilled,
   and a reserve for the tokens it may still generate (times a factor that decays while nothing
   overflows, SGLang's way, but never below the share of max_tokens that finished requests actually
   generated: requests that all run to their limit would otherwise be admitted on a bet that they
   stop early, and preempted). Counting a compressed prompt at its worst
   case would admit no more sequences than the dense cache does; an estimate that proves short
   is caught by step 2;
2. makes sure the step's writes fit the budget at their worst case, preempting the newest running
   request by recompute (its pages freed, its prompt and output queued again) until they do, never
   the last running one;
3. runs the decodes (one token each) in one batched forward and the prefill chunks (chunked
   prefill, left-padded) in another: padding one-token decodes to a chunk's length would spend
   the chunk's compute on every decode row;
4. samples (greedy, temperature, top-p, seed), applies stop tokens and strings, and frees the
   pages of finished or aborted requests at once.

The pool therefore never exceeds the budget (``kv_bytes`` counts pages in use plus the fixed
per-sequence state of the policy, DMC's open runs or DMS's ring). Every model the DMC package
converts runs here: a retrofitted DMC or DMS checkpoint, a plain model with ``force_cr``, and
``dense`` (the same weights, engine and pool with compression off).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dynacomp.dmc.cache import DMCCache

FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; temperature 0 is greedy."""
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class EngineConfig:
    kv_budget: int = 256 * 2**20          # bytes of KV pages plus per-sequence policy state
    max_num_seqs: int = 64                 # running sequences at most
    max_batched_tokens: int = 512          # prompt tokens prefilled per step
    max_model_len: int | None = None       # prompt + output positions (None: the model's)
    reserve_start: float = 1.0             # SGLang's schedule: the reserve factor starts here after a preemption,
    reserve_decay: float = 0.005           # falls by this per step while nothing overflows,
    reserve_floor: float = 0.1             # down to this,
    reserve_by_output: bool = True         # and never below the share of max_tokens finished requests generated

    def __post_init__(self) -> None:
        for name in ("kv_budget", "max_num_seqs", "max_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    arrival: float
    output: list[int] = field(default_factory=list)
    seq: int | None = None                 # its sequence id in the cache while it holds one
    fed: int = 0                           # tokens of prompt + output stored in the cache
    finish_reason: str | None = None
    first_token_time: float | None = None
    scheduled_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    peak_kv_bytes: int = 0
    kv_ratio: float = 1.0                  # tokens over slots when it last ran
    preemptions: int = 0
    text_offset: int = 0                   # characters of the output already streamed
    generator: torch.Generator | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class StepOutput:
    """What one request got from a step: its new tokens and, if it finished, why."""
    request: Request
    new_tokens: list[int]
    finish_reason: str | None


@dataclass
class EngineStats:
    steps: int = 0
    preemptions: int = 0
    peak_running: int = 0
    running_sum: int = 0                   # sequences running, summed over steps (mean_running)
    peak_kv_bytes: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_output_tokens: int = 0        # generated by requests that finished by stop or length,
    finished_max_tokens: int = 0           # and what they were allowed
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))

    @property
    def mean_running(self) -> float:
        return self.running_sum / max(self.steps, 1)

    @property
    def output_share(self) -> float:
        """The share of max_tokens that finished requests generated (1 until one finishes)."""
        return self.finished_output_tokens / self.finished_max_tokens if self.finished_max_tokens else 1.0


class Engine:
    """Continuous batching of ``model`` (converted by ``dynacomp.dmc``) under a KV budget."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, name: str = "model"):
        self.model, self.tokenizer, self.config, self.name = model.eval(), tokenizer, config or EngineConfig(), name
        self.cache: DMCCache = model.new_cache()
        self.max_model_len = self.config.max_model_len or model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else (eos or []))
        layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
        head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
        element = torch.finfo(next(model.parameters()).dtype).bits // 8
        self.page_bytes = model.dmc_config.page_size * 2 * head_dim * element
        self.rows_per_seq = layers * heads
        self.state_bytes_per_seq = (layers * heads * self._state_entries(model.dmc_config, head_dim, element)
                                    + (self.cache.control.bytes_per_sequence() if self.cache.control else 0))
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.reserve_factor = self.config.reserve_start
        self.stats = EngineStats()
        self._ids = itertools.count()

    @staticmethod
    def _state_entries(config, head_dim: int, element: int) -> int:
        """Bytes of the policy's fixed per-row state (see the cache layers): DMC's open run of
        window - 1 pre-RoPE keys and values plus fp32 importances, DMS's ring of slot ids and flags
        (and with a held ratio, its fp32 logit history)."""
        if config.policy == "dms":
            return config.eviction_window * (8 + 1) + (4 * (config.control_window - 1) if config.hold_keep else 0)
        return (config.window - 1) * (2 * head_dim * element + 4)

    # -- requests -------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> Request:
        """Queue a request; a prompt that cannot fit the context or the budget is refused (ValueError)."""
        params = params or SamplingParams()
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceed the model's "
                             f"{self.max_model_len} positions")
        if self._worst_case_bytes(len(ids) + params.max_tokens) > self.config.kv_budget:
            raise ValueError(f"a request of {len(ids) + params.max_tokens} tokens may not fit the KV budget of "
                             f"{self.config.kv_budget} bytes even alone")
        request = Request(request_id or f"req-{next(self._ids)}", ids, params, time.monotonic())
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            request.generator = torch.Generator().manual_seed(seed)
        self.requests[request.id] = request
        self.waiting.append(request)
        return request

    def abort(self, request_id: str) -> None:
        """Finish a request now; its pages return to the pool at once."""
        request = self.requests.get(request_id)
        if request is not None and not request.finished:
            self._finish(request, "abort")

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- memory ---------------------------------------------------------------------------------

    def _worst_case_bytes(self, tokens: int) -> int:
        """One sequence of ``tokens`` tokens, every token a slot, with its page slack and state."""
        pages = self.rows_per_seq * math.ceil(tokens / self.model.dmc_config.page_size)
        return pages * self.page_bytes + self.state_bytes_per_seq

    def kv_bytes(self) -> int:
        """What the pool holds now: pages in use plus the state of every sequence holding one."""
        holding = sum(r.seq is not None for r in self.running)
        return self.cache.bytes_in_use() + holding * self.state_bytes_per_seq

    def _pages_per_token(self, request: Request) -> float:
        """Pages a request has taken per token stored: its own, else the running requests' average,
        else one slot per token (nothing observed yet)."""
        observed = [r for r in ([request] if request.fed else self.running) if r.seq is not None and r.fed]
        if not observed:
            return self.rows_per_seq / self.model.dmc_config.page_size
        pages = self.cache.pages_held(torch.tensor([r.seq for r in observed]))
        return float(pages.sum()) / sum(r.fed for r in observed)

    def _reserve_bytes(self, request: Request) -> float:
        """Bytes a request may still add to the pool, at its observed pages per token: the tokens it
        has but has not stored (a waiting prompt, the rest of a chunked prefill), the tokens it may
        still generate times the reserve factor, and its per-sequence state if it holds none yet."""
        unstored = len(request.tokens) - request.fed
        remaining = request.params.max_tokens - len(request.output)
        tokens = unstored + remaining * self.reserve_factor
        return tokens * self._pages_per_token(request) * self.page_bytes + (request.seq is None) * self.state_bytes_per_seq

    def _step_bytes(self, rows: list[tuple[Request, int]]) -> int:
        """Worst-case bytes this step's writes can add: new pages, and state for new sequences."""
        if not rows:
            return 0
        held = [(r, n) for r, n in rows if r.seq is not None]
        new = [(r, n) for r, n in rows if r.seq is None]
        pages = 0
        if held:
            pages += self.cache.pages_needed(torch.tensor([r.seq for r, _ in held]), torch.tensor([n for _, n in held]))
        pages += sum(self.rows_per_seq * math.ceil(n / self.model.dmc_config.page_size) for _, n in new)
        return pages * self.page_bytes + len(new) * self.state_bytes_per_seq

    # -- scheduling -----------------------------------------------------------------------------

    def _schedule(self) -> tuple[list[Request], list[tuple[Request, int]]]:
        """(decode requests, [(prefill request, tokens this step)]) that fit every budget."""
        config = self.config
        budget = config.max_batched_tokens
        prefill: list[tuple[Request, int]] = []
        for request in self.running:                            # prompts being prefilled in chunks go first
            pending = len(request.tokens) - request.fed
            if pending > 1 and budget > 0:
                prefill.append((request, min(pending, budget)))
                budget -= prefill[-1][1]
        reserved = sum(self._reserve_bytes(r) for r in self.running)
        while self.waiting and budget > 0 and len(self.running) < config.max_num_seqs:
            request = self.waiting[0]
            need = self._reserve_bytes(request)
            if self.running and self.kv_bytes() + reserved + need > config.kv_budget:
                break
            self.waiting.popleft()
            request.scheduled_time = request.scheduled_time or time.monotonic()
            self.running.append(request)
            prefill.append((request, min(len(request.tokens) - request.fed, budget)))
            budget -= prefill[-1][1]
            reserved += need
        decode = [r for r in self.running if len(r.tokens) - r.fed == 1 and r not in {p for p, _ in prefill}]
        while self.kv_bytes() + self._step_bytes([(r, 1) for r in decode] + prefill) > config.kv_budget:
            victim = self.running[-1]
            if len(self.running) == 1:
                break                      # the last one runs alone: add_request checked it fits
            self._preempt(victim)
            decode = [r for r in decode if r is not victim]
            prefill = [(r, n) for r, n in prefill if r is not victim]
        return decode, prefill

    def _preempt(self, request: Request) -> None:
        """Free the newest request's pages and queue it again with its output (recompute)."""
        self.running.remove(request)
        if request.seq is not None:
            self.cache.free([request.seq])
        request.seq, request.fed = None, 0
        request.preemptions += 1
        self.stats.preemptions += 1
        self.reserve_factor = self.config.reserve_start
        self.waiting.appendleft(request)

    # -- a step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> list[StepOutput]:
        """Admit, run one decode forward and one prefill forward, sample, free; returns what each
        request got."""
        decode, prefill = self._schedule()
        outputs: dict[str, StepOutput] = {}
        for rows in ([(r, 1) for r in decode], prefill):
            if rows:
                self._forward(rows, outputs)
        self.stats.steps += 1
        self.stats.peak_running = max(self.stats.peak_running, len(self.running))
        self.stats.running_sum += len(self.running)
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.kv_bytes())
        # Requests that run to max_tokens leave nothing to gamble on: an engine that reserved less
        # than they will take would preempt, and recompute, as surely as they grow.
        floor = max(self.config.reserve_floor, self.stats.output_share if self.config.reserve_by_output else 0.0)
        self.reserve_factor = max(floor, self.reserve_factor - self.config.reserve_decay)
        return list(outputs.values())

    def fail_running(self) -> list[Request]:
        """Finish every running request with ``error`` (after a step raised); returns them."""
        failed = list(self.running)
        for request in failed:
            self._finish(request, "error")
        return failed

    def live_ratio(self) -> float:
        """Tokens per slot over the running sequences' KV heads (1 with nothing running)."""
        seqs = torch.tensor([r.seq for r in self.running if r.seq is not None], dtype=torch.long)
        if not seqs.numel():
            return 1.0
        return float(self.cache.tokens[seqs].sum()) * self.rows_per_seq / max(int(self.cache.slots(seqs).sum()), 1)

    def _forward(self, rows: list[tuple[Request, int]], outputs: dict[str, StepOutput]) -> None:
        """Feed each request its next ``n`` tokens (left-padded into one batch), then sample for
        those whose tokens are all stored."""
        fresh = [r for r, _ in rows if r.seq is None]
        if fresh:
            for request, seq in zip(fresh, self.cache.add_sequences(len(fresh)).tolist()):
                request.seq = seq
        length = max(n for _, n in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, (request, n) in enumerate(rows):
            ids[i, length - n:] = torch.tensor(request.tokens[request.fed:request.fed + n])
            mask[i, length - n:] = 1
        seqs = torch.tensor([r.seq for r, _ in rows])
        logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device), cache=self.cache, seqs=seqs,
                            use_cache=True, logits_to_keep=1).logits[:, -1].float()
        now = time.monotonic()
        slots, held = self.cache.slots(seqs).sum((0, 2)), self.cache.tokens[seqs]
        pages = self.cache.pages_held(seqs)
        for i, (request, n) in enumerate(rows):
            self.stats.prompt_tokens += max(0, min(request.fed + n, len(request.prompt)) - request.fed)
            request.fed += n
            request.kv_ratio = float(held[i]) * self.rows_per_seq / max(int(slots[i]), 1)
            if request.fed < len(request.prompt):
                continue
            if request.fed < len(request.tokens):                 # recomputing after a preemption
                continue
            token = self._sample(request, logits[i])
            request.output.append(token)
            request.token_times.append(now)
            request.first_token_time = request.first_token_time or now
            self.stats.generation_tokens += 1
            request.peak_kv_bytes = max(request.peak_kv_bytes,
                                        int(pages[i]) * self.page_bytes + self.state_bytes_per_seq)
            reason = self._stop_reason(request, token)
            outputs[request.id] = StepOutput(request, [token], reason)
            if reason is not None:
                self._finish(request, reason)

    def _sample(self, request: Request, logits: Tensor) -> int:
        params = request.params
        if params.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / params.temperature, -1)
        if params.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p     # keep the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs.cpu(), 1, generator=request.generator))

    def _stop_reason(self, request: Request, token: int) -> str | None:
        params = request.params
        if token in self.eos and not params.ignore_eos:
            return "stop"
        if params.stop and any(s in self._decoded(request) for s in params.stop):
            return "stop"
        if len(request.output) >= params.max_tokens or len(request.tokens) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        self.stats.finished[reason] += 1
        if reason in ("stop", "length"):
            self.stats.finished_output_tokens += len(request.output)
            self.stats.finished_max_tokens += request.params.max_tokens
        for queue in (self.waiting, self.running):
            if request in queue:
                queue.remove(request)
        if request.seq is not None:
            self.cache.free([request.seq])
            request.seq = None

    # -- text -----------------------------------------------------------------------------------

    def _decoded(self, request: Request) -> str:
        """The output decoded, without a final stop token."""
        ids = request.output
        if ids and ids[-1] in self.eos and not request.params.ignore_eos:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def text(self, request: Request) -> str:
        """The output decoded, cut before the first stop string, without the stop token."""
        text = self._decoded(request)
        cuts = [text.find(s) for s in request.params.stop if s in text]
        return text[:min(cuts)] if cuts else text

    def new_text(self, request: Request) -> str:
        """The part of ``text`` not returned before (for streaming); holds back what could still
        become a stop string."""
        text = self.text(request)
        if not request.finished and request.params.stop:
            text = text[:max(len(text) - max(len(s) for s in request.params.stop) + 1, request.text_offset)]
        new, request.text_offset = text[request.text_offset:], len(text)
        return new

    # -- offline --------------------------------------------------------------------------------

    def generate_batch(self, prompts: Iterable[str | list[int]], params: SamplingParams | None = None) -> list[Request]:
        """Run prompts to completion with continuous batching; the finished requests, in order."""
        requests = [self.add_request(prompt, params) for prompt in prompts]
        while self.has_unfinished():
            self.step()
        return requests
