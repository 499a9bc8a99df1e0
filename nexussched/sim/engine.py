"""A vLLM-like engine simulator: continuous batching over a paged KV cache.

Mechanics follow vLLM V1's scheduler: each step it first serves running requests in order (decodes
take one token, unfinished prefills take a chunk of the token budget), preempting from the tail of
the running list by recompute when KV blocks run out; then, if nothing was preempted, admits waiting
requests FCFS while the budget, `max_num_seqs` and free blocks allow, chunking long prompts. Step
time comes from the hardware profile (ground truth + noise). Each step emits a StepRecord.

The step schedulers live in vllm_scheduler.py, KV block and prefix-cache bookkeeping in
kv_blocks.py, runs of decode-only steps simulated in one go in macro_step.py.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..engine_sched.base import EnginePolicy, VllmDefault
from ..engine_sched.plan import SeqState, StepState
from ..perfmodel.telemetry import StepRecord
from .hardware import HardwareProfile
from .macro_step import MacroSteps
from .noise import NoiseStream
from .prefix_cache import BlockListener, PrefixCache
from .request import SimRequest
from .vllm_scheduler import VllmScheduler


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # default: from the profile's memory
    max_num_seqs: int | None = None  # default: the profile's (vLLM's per-device default)
    max_num_batched_tokens: int | None = None
    max_model_len: int = 131072
    # vLLM V1's automatic prefix caching (on by default there too; --no-enable-prefix-caching)
    enable_prefix_caching: bool = True


class EngineSim(VllmScheduler, MacroSteps):
    """One simulated engine on simulated time. The cluster drives it with start/finish calls."""

    def __init__(
        self,
        profile: HardwareProfile,
        name: str = "engine",
        seed: int = 0,
        config: EngineConfig | None = None,
        policy: EnginePolicy | None = None,
        telemetry: Callable[[StepRecord], None] | None = None,
        kv_events: BlockListener | None = None,
    ) -> None:
        cfg = config or EngineConfig()
        self.name = name
        self.profile = profile
        self.cost = profile.step_model()
        self.block_size = cfg.block_size
        self.total_blocks = cfg.num_blocks or profile.kv_tokens() // cfg.block_size
        self.free_blocks = self.total_blocks
        self.cache: PrefixCache | None = (
            PrefixCache(self.total_blocks, kv_events) if cfg.enable_prefix_caching else None
        )
        self._step_cached = 0  # prompt tokens served from cache to requests admitted this step
        self.max_num_seqs = cfg.max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = cfg.max_num_batched_tokens or profile.max_num_batched_tokens
        # vLLM refuses to start when one sequence of max_model_len tokens cannot fit in the KV
        # cache (the operator then lowers --max-model-len): so no admitted request can outgrow it.
        self.max_model_len = min(cfg.max_model_len, self.total_blocks * self.block_size)
        self.policy = policy or VllmDefault()
        self.telemetry = telemetry
        listeners = [telemetry] if telemetry is not None else []
        if self.policy.learns:
            listeners.append(self.policy.observe)
        self._listeners: list[Callable[[StepRecord], None]] = listeners
        # requests that got their first token in the last step, when someone asks (the cluster,
        # for a router policy that watches answers start)
        self.first_tokens: list[SimRequest] | None = None
        self.noise = NoiseStream(
            np.random.default_rng(seed),
            profile.noise_cv,
            profile.straggler_prob,
            profile.straggler_factor,
        )
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.busy = False
        self.step_end = 0.0
        self.steps = 0
        self.preemptions = 0
        self.busy_time = 0.0
        self._batch: list[tuple[SimRequest, int]] = []
        self._step_start = 0.0
        self._record: StepRecord | None = None
        self._macro: tuple[int, int, list[float], list[float]] | None = None  # n, S0, ends, durs
        self._cancelled: list[SimRequest] = []  # left by their clients while in the pending step
        self.fallbacks = 0  # steps where the policy's plan left nothing runnable (vLLM's instead)

    # ---- state a router or planner may read ------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.free_blocks / self.total_blocks if self.total_blocks else 1.0

    @property
    def prefix_cache_queries(self) -> int:
        """Prompt tokens looked up in the prefix cache (vLLM's vllm:prefix_cache_queries)."""
        return self.cache.queries if self.cache is not None else 0

    @property
    def prefix_cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    def queued_prefill_tokens(self) -> int:
        """Prompt tokens still to compute: waiting requests plus unfinished running prefills."""
        t = 0
        for r in self.waiting:
            t += r.prompt + r.generated - r.computed
        for r in self.running:
            need = r.prompt + r.generated - r.computed
            if need > 1:
                t += need
        return t

    def decode_ctx_sum(self) -> int:
        return sum(r.computed for r in self.running)

    def set_speed(self, factor: float) -> None:
        """Change the engine's true speed (slowdown experiments); schedulers must notice by learning."""
        self.profile = self.profile.slowed(factor)
        self.cost = self.profile.step_model()

    # ---- admission ---------------------------------------------------------------------------
    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """vLLM's admission rule: prompt + declared max_tokens within max_model_len, and a KV
        cache that can hold the prompt."""
        return (
            prompt_tokens + max_tokens <= self.max_model_len
            and math.ceil((prompt_tokens + 1) / self.block_size) <= self.total_blocks
        )

    def refusal(self, prompt_tokens: int, max_tokens: int) -> str:
        """Why `fits` says no, naming both sizes (vLLM's context-length error, or the KV cache)."""
        need = prompt_tokens + max_tokens
        if need > self.max_model_len:
            return (
                f"{self.name}: maximum context length is {self.max_model_len} tokens, the request "
                f"needs {need} ({prompt_tokens} prompt + {max_tokens} max_tokens)"
            )
        return (
            f"{self.name}: a prompt of {prompt_tokens} tokens does not fit in its KV cache of "
            f"{self.total_blocks * self.block_size} tokens"
        )

    def enqueue(self, req: SimRequest, now: float) -> None:
        req.engine_name = self.name
        req.enqueue_time = now
        self.waiting.append(req)

    def remove_waiting(self, req_id: int) -> SimRequest | None:
        """Take back a request that has not started (for re-binding); None if it has started."""
        for r in self.waiting:
            if r.id == req_id and r.computed == 0:
                self.waiting.remove(r)
                return r
        return None

    def abort(self, req_id: object) -> SimRequest | None:
        """Drop a request wherever it is (its client went away) and free its KV blocks.

        Only between steps (not while a step started by start_step is pending)."""
        for r in self.running:
            if r.id == req_id:
                self.running.remove(r)
                self._free(r)
                return r
        for r in self.waiting:
            if r.id == req_id:
                self.waiting.remove(r)
                return r
        return None

    def cancel(self, req: SimRequest) -> None:
        """Its client left: drop it now, or when the pending step ends if that step serves it."""
        if self.busy and (
            any(r is req for r, _ in self._batch)
            or (self._macro is not None and any(r is req for r in self.running))
        ):
            self._cancelled.append(req)
        else:
            self.abort(req.id)

    # ---- stepping ----------------------------------------------------------------------------
    def start_step(self, now: float, horizon: float = math.inf) -> float | None:
        """Plan and start the next step at `now`; returns its end time, or None when idle.

        `horizon` is the next time an outside event is known to come; a macro step stops there.
        """
        if not self.running and not self.waiting:
            self.busy = False
            return None
        self._step_start = now
        if self.policy.fast_decode_ok() and self._try_macro(now, horizon):
            self.busy = True
            return self.step_end
        plan = None
        if self.policy.plans:
            plan = self.policy.plan(self.step_state(now))
        if plan is not None:
            self._schedule_planned(plan)
        if not self._batch:
            # vLLM's own schedule: the policy plans none, or its plan left nothing runnable (e.g.
            # partial prefills holding all KV blocks: only preempting one frees room). A second try
            # admits what the first one's preemption freed room for.
            self.fallbacks += plan is not None
            budget = self.policy.token_budget(self.max_num_batched_tokens)
            self._schedule_fcfs(budget)
            if not self._batch:
                self._schedule_fcfs(budget)
        if not self._batch:
            # Nothing fits (e.g. KV full of waiting-only work): idle until something changes.
            self.busy = False
            return None
        dur = self._batch_duration()
        self.busy = True
        self.step_end = now + dur
        return self.step_end

    def _batch_duration(self) -> float:
        chunks: list[tuple[int, int]] = []
        nd = 0
        dctx = 0
        for r, n in self._batch:
            if n == 1 and r.generated > 0 and r.computed == r.prompt + r.generated - 1:
                nd += 1
                dctx += r.computed
            else:
                chunks.append((n, r.computed))
        dur = self.cost.time(chunks, nd, dctx) * self.noise.next()
        if self._listeners:
            self._record = StepRecord(
                duration=dur,
                prefill_chunks=tuple(chunks),
                num_decodes=nd,
                decode_ctx_sum=dctx,
                num_waiting=len(self.waiting),
                cached_tokens=self._step_cached,
                t=self._step_start,
                step=self.steps,
                engine=self.name,
            )
        self._step_cached = 0
        return dur

    def finish_step(self) -> list[SimRequest]:
        """Apply the step that ends at `self.step_end`; returns the requests that finished."""
        end = self.step_end
        self.busy = False
        self.busy_time += end - self._step_start
        if self._macro is not None:
            done = self._finish_macro()
            if self._cancelled:
                gone = {id(r) for r in self._cancelled}
                done = [r for r in done if id(r) not in gone]
                for r in self._cancelled:
                    self.abort(r.id)
                self._cancelled.clear()
            return done
        self.steps += 1
        done: list[SimRequest] = []
        if self._cancelled:
            gone = {id(r) for r in self._cancelled}
            self._batch = [(r, n) for r, n in self._batch if id(r) not in gone]
            for r in self._cancelled:
                self.abort(r.id)
            self._cancelled.clear()
        for r, n in self._batch:
            r.computed += n
            if r.computed == r.prompt + r.generated:
                r.generated += 1
                if r.generated == 1:
                    r.first_token = end
                    if self.first_tokens is not None:
                        self.first_tokens.append(r)
                else:
                    itl = end - r.last_token
                    if itl > r.max_itl:
                        r.max_itl = itl
                r.last_token = end
                if r.generated >= r.output:
                    r.finish = end
                    done.append(r)
        if done:
            fin = self.policy.finished
            for r in done:
                self.running.remove(r)
                self._free(r)
                fin(r.id, r.generated, r.max_tokens)  # the engine learns the length at the end
        self._batch = []
        rec = self._record
        if rec is not None:
            rec.kv_blocks_used = self.total_blocks - self.free_blocks
            self._record = None
            for f in self._listeners:
                f(rec)
        return done

    # ---- planner view ------------------------------------------------------------------------
    def step_state(self, now: float) -> StepState:
        decodes: list[SeqState] = []
        prefills: list[SeqState] = []
        for r in self.running:
            s = r.seq_state(True)
            if r.generated > 0 and r.prompt + r.generated - r.computed == 1:
                decodes.append(s)
            else:
                prefills.append(s)
        cache = self.cache
        bs = self.block_size
        for r in self.waiting:
            s = r.seq_state(False)
            # its cached prefix counts as computed, as vLLM finds it before computing anything
            # (the vLLM plug-in asks vLLM's lookup the same): a planner costs only the tail
            if cache is not None and r.computed == 0 and r.hashes:
                hit, _ = cache.match(r.hashes, (r.prompt + r.generated - 1) // bs)
                if hit:
                    s.computed = hit * bs
            prefills.append(s)
        return StepState(
            now=now,
            decodes=decodes,
            prefills=prefills,
            free_blocks=self.free_blocks,
            total_blocks=self.total_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            num_running=len(self.running),
        )
