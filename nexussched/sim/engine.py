"""A vLLM-like engine simulator: continuous batching over a paged KV cache.

Mechanics follow vLLM V1's scheduler: each step it first serves running requests in order (decodes
take one token, unfinished prefills take a chunk of the token budget), preempting from the tail of
the running list by recompute when KV blocks run out; then, if nothing was preempted, admits waiting
requests FCFS while the budget, `max_num_seqs` and free blocks allow, chunking long prompts. Step
time comes from the hardware profile (ground truth + noise). Each step emits a StepRecord.

A run of decode-only steps during which nothing can change the batch (no admission possible, no
request finishing, KV sufficient) is simulated in one go ("macro step"); an outside event in the
middle (a new request) truncates it at the next step boundary, so results match step-by-step
simulation while the hot path stays a tight arithmetic loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..engine_sched.base import EnginePolicy, VllmDefault
from ..engine_sched.plan import SeqState, StepPlan, StepState
from ..perfmodel.telemetry import StepRecord
from .hardware import HardwareProfile, lognormal_sigma
from .prefix_cache import BlockListener, PrefixCache
from .request import SimRequest

MAX_MACRO_STEPS = 2048


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # default: from the profile's memory
    max_num_seqs: int | None = None  # default: the profile's (vLLM's per-device default)
    max_num_batched_tokens: int | None = None
    max_model_len: int = 131072
    # vLLM V1's automatic prefix caching (on by default there too; --no-enable-prefix-caching)
    enable_prefix_caching: bool = True


class NoiseStream:
    """Multiplicative step-time noise: lognormal with rare stragglers, drawn in blocks."""

    def __init__(self, rng: np.random.Generator, cv: float, p_strag: float, f_strag: float) -> None:
        self._rng = rng
        self._sigma = lognormal_sigma(cv)
        self._p = p_strag
        self._f = f_strag
        self._buf: list[float] = []
        self._i = 0

    def _refill(self) -> None:
        n = 8192
        s = self._sigma
        x = self._rng.lognormal(-s * s / 2.0, s, n)
        x[self._rng.random(n) < self._p] *= self._f
        self._buf = x.tolist()
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._refill()
        v = self._buf[self._i]
        self._i += 1
        return v


class EngineSim:
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

    def _schedule_fcfs(self, budget: int) -> None:
        batch: list[tuple[SimRequest, int]] = []
        bs = self.block_size
        preempted = False
        running = self.running
        cache = self.cache
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.prompt + r.generated - r.computed, budget)
            extra = -(-(r.computed + n) // bs) - r.blocks
            while extra > self.free_blocks:
                victim = running.pop()  # lowest priority: the tail
                self._preempt(victim)
                preempted = True
                if victim is r:
                    break
            if i >= len(running):
                break  # r itself was preempted
            self.free_blocks -= extra
            r.blocks += extra
            if cache is not None:
                if extra:
                    cache.take(extra)
                if r.hashes and (r.computed + n) // bs > r.sealed:
                    self._seal(r, r.computed + n)
            batch.append((r, n))
            budget -= n
            i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                r = waiting[0]
                if cache is not None and r.computed == 0 and r.hashes:
                    n = self._admit_cached(r, budget)
                    if n == 0:
                        break
                    waiting.popleft()
                    running.append(r)
                    batch.append((r, n))
                    budget -= n
                    continue
                n = min(r.prompt + r.generated - r.computed, budget)
                extra = -(-(r.computed + n) // bs) - r.blocks
                if extra > self.free_blocks:
                    break
                waiting.popleft()
                running.append(r)
                self.free_blocks -= extra
                r.blocks += extra
                if cache is not None and extra:
                    cache.take(extra)
                batch.append((r, n))
                budget -= n
        self._batch = batch

    def _schedule_planned(self, plan: StepPlan) -> None:
        """Decodes first (as vLLM), then prefills in the plan's order, each capped by its chunk cap."""
        batch: list[tuple[SimRequest, int]] = []
        bs = self.block_size
        budget = plan.token_budget
        running = self.running
        cache = self.cache
        preempted = False
        gone: set = set()  # ids preempted below (a set: `in running` would make this O(n^2))
        for r in list(running):
            if budget <= 0:
                break
            if r.prompt + r.generated - r.computed != 1 or r.generated == 0:
                continue
            if gone and r.id in gone:
                continue  # preempted below while serving an earlier decode
            extra = -(-(r.computed + 1) // bs) - r.blocks
            while extra > self.free_blocks and running:
                victim = running.pop()
                self._preempt(victim)
                gone.add(victim.id)
                preempted = True
                if victim is r:
                    break
            if gone and r.id in gone:
                continue
            self.free_blocks -= extra
            r.blocks += extra
            if cache is not None:
                if extra:
                    cache.take(extra)
                if r.hashes and (r.computed + 1) // bs > r.sealed:
                    self._seal(r, r.computed + 1)
            batch.append((r, 1))
            budget -= 1
        by_id = {r.id: r for r in running}
        waiting_ids = set()
        for r in self.waiting:
            by_id.setdefault(r.id, r)
            waiting_ids.add(r.id)
        order = plan.order
        if order is None:
            order = [
                r.id for r in running if r.prompt + r.generated - r.computed > 1 or r.generated == 0
            ]
            order += [r.id for r in self.waiting]
        caps = plan.chunk_cap
        for rid in order:
            if budget <= 0:
                break
            r = by_id.get(rid)
            if r is None:
                continue
            is_waiting = rid in waiting_ids
            if is_waiting and (preempted or len(running) >= self.max_num_seqs):
                continue
            if is_waiting and cache is not None and r.computed == 0 and r.hashes:
                n = self._admit_cached(r, budget, caps.get(rid))
                if n == 0:
                    continue
                self.waiting.remove(r)
                waiting_ids.discard(rid)
                running.append(r)
                batch.append((r, n))
                budget -= n
                continue
            need = r.prompt + r.generated - r.computed
            n = min(need, budget, caps.get(rid, need))
            if n <= 0:
                continue
            extra = -(-(r.computed + n) // bs) - r.blocks
            if extra > self.free_blocks:
                continue
            if is_waiting:
                self.waiting.remove(r)
                waiting_ids.discard(rid)
                running.append(r)
            self.free_blocks -= extra
            r.blocks += extra
            if cache is not None:
                if extra:
                    cache.take(extra)
                if r.hashes and (r.computed + n) // bs > r.sealed:
                    self._seal(r, r.computed + n)
            batch.append((r, n))
            budget -= n
        self._batch = batch

    # ---- prefix caching ---------------------------------------------------------------------
    def _admit_cached(self, r: SimRequest, budget: int, cap: int | None = None) -> int:
        """Admit waiting request r (nothing computed) with its longest cached prefix: the hit
        blocks are referenced and count as computed; then up to min(budget, cap) tokens of what
        is left get new blocks. Returns the tokens scheduled, 0 (nothing changed) if its blocks
        do not fit."""
        cache = self.cache
        assert cache is not None
        bs = self.block_size
        total = r.prompt + r.generated
        hit, hit_free = cache.match(r.hashes, (total - 1) // bs)
        done = hit * bs
        need = total - done
        n = min(need, budget) if cap is None else min(need, budget, cap)
        if n <= 0:
            return 0
        extra = -(-(done + n) // bs) - hit
        if extra + hit_free > self.free_blocks:
            return 0
        if r.preemptions == 0:
            cache.record(total, done)
            r.cached = done
            self._step_cached += done
        if hit:
            held = list(r.hashes[:hit])
            cache.acquire(held)
            r.held = held
            self.free_blocks -= hit_free
        r.sealed = hit
        r.computed = done
        r.blocks = hit + extra
        self.free_blocks -= extra
        if extra:
            cache.take(extra)
        if (done + n) // bs > hit:
            self._seal(r, done + n)
        return n

    def _seal(self, r: SimRequest, upto: int) -> None:
        """Cache r's blocks that are full once its first `upto` tokens are computed (vLLM caches
        them when it allocates for that work)."""
        cache = self.cache
        assert cache is not None
        hashes = r.hashes
        full = min(upto // self.block_size, len(hashes))
        if full > r.sealed:
            cache.store_run(hashes, r.sealed, full, r.held)
            r.sealed = full

    def _free(self, r: SimRequest) -> None:
        """Return r's KV blocks: cached ones stay cached (evictable once unreferenced)."""
        cache = self.cache
        if cache is None:
            self.free_blocks += r.blocks
        else:
            self.free_blocks += cache.release(r.held, r.blocks - len(r.held))
            r.held = []
            r.sealed = 0
        r.blocks = 0

    def _preempt(self, r: SimRequest) -> None:
        # vLLM V1 preempts by recompute: free the KV, restart the prefill from scratch.
        self._free(r)
        r.computed = 0
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)

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

    def _try_macro(self, now: float, horizon: float) -> bool:
        running = self.running
        n = len(running)
        if n == 0:
            return False
        k = MAX_MACRO_STEPS
        S = 0
        for r in running:
            if r.generated == 0 or r.prompt + r.generated - r.computed != 1:
                return False
            left = r.output - r.generated
            if left < k:
                k = left
            S += r.computed
        if self.waiting and self._admissible(n):
            return False
        q = self.free_blocks // n
        k = min(k, q * self.block_size)
        if k < 2:
            return False
        # The step model's decode time, inlined: this loop is the simulator's hot path.
        base, kv, half, serial, overlap = self.cost.decode_terms(n)
        speed = self.cost.speed
        sqrt = math.sqrt
        noise = self.noise
        ends: list[float] = []
        durs: list[float] = []
        t = now
        ctx = S
        for _ in range(k):
            gpu = base + kv * sqrt(ctx * (ctx + half))
            d = gpu + serial
            if overlap > gpu:
                d += overlap - gpu
            d *= speed * noise.next()
            t += d
            ends.append(t)
            durs.append(d)
            ctx += n
            if t >= horizon:
                break
        self._macro = (n, S, ends, durs)
        self.step_end = t
        return True

    def _admissible(self, n_running: int) -> bool:
        """Could the head of the waiting queue be admitted next to `n_running` decodes?"""
        if n_running >= self.max_num_seqs:
            return False
        budget = self.policy.token_budget(self.max_num_batched_tokens) - n_running
        if budget <= 0:
            return False
        r = self.waiting[0]
        bs = self.block_size
        if self.cache is not None and r.computed == 0 and r.hashes:
            total = r.prompt + r.generated
            hit, hit_free = self.cache.match(r.hashes, (total - 1) // bs)
            n = min(total - hit * bs, budget)
            return -(-(hit * bs + n) // bs) - hit + hit_free <= self.free_blocks
        n = min(r.prompt + r.generated - r.computed, budget)
        return -(-(r.computed + n) // bs) - r.blocks <= self.free_blocks

    def truncate(self, now: float) -> float:
        """An outside event at `now`: cut a macro step at the first step boundary at or after it."""
        if self._macro is None:
            return self.step_end
        n, S, ends, durs = self._macro
        if ends[-1] <= now:
            return self.step_end
        j = 0
        while ends[j] < now:
            j += 1
        del ends[j + 1 :]
        del durs[j + 1 :]
        self.step_end = ends[-1]
        return self.step_end

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

    def _finish_macro(self) -> list[SimRequest]:
        assert self._macro is not None
        n, S, ends, durs = self._macro
        self._macro = None
        k = len(ends)
        self.steps += k
        end = ends[-1]
        mx = max(durs)
        bs = self.block_size
        cache = self.cache
        done: list[SimRequest] = []
        for r in self.running:
            r.computed += k
            r.generated += k
            if mx > r.max_itl:
                r.max_itl = mx
            r.last_token = end
            need_blocks = -(-r.computed // bs)
            if need_blocks > r.blocks:
                self.free_blocks -= need_blocks - r.blocks
                if cache is not None:
                    cache.take(need_blocks - r.blocks)
                r.blocks = need_blocks
            if cache is not None and r.hashes and r.computed // bs > r.sealed:
                self._seal(r, r.computed)
            if r.generated >= r.output:
                r.finish = end
                done.append(r)
        if self._listeners:
            t0 = self._step_start
            nw = len(self.waiting)
            used = self.total_blocks - self.free_blocks
            step0 = self.steps - k
            for i in range(k):
                rec = StepRecord(
                    duration=durs[i],
                    num_decodes=n,
                    decode_ctx_sum=S + i * n,
                    num_waiting=nw,
                    kv_blocks_used=used,
                    t=t0,
                    step=step0 + i,
                    engine=self.name,
                )
                t0 = ends[i]
                for f in self._listeners:
                    f(rec)
        fin = self.policy.finished
        for r in done:
            self.running.remove(r)
            self._free(r)
            fin(r.id, r.generated, r.max_tokens)  # the engine learns the length at the end
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
        for r in self.waiting:
            prefills.append(r.seq_state(False))
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
