"""Macro steps: a run of decode-only steps during which nothing can change the batch (no
admission possible, no request finishing, KV sufficient) simulated in one go. An outside event in
the middle (a new request) truncates it at the next step boundary (`truncate`), so results match
step-by-step simulation while the hot path stays a tight arithmetic loop.

A mixin of EngineSim (engine.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..engine_sched.base import EnginePolicy
from ..perfmodel.telemetry import StepRecord
from .hardware import StepModel
from .kv_blocks import KvBlocks
from .noise import NoiseStream
from .request import SimRequest

MAX_MACRO_STEPS = 2048


class MacroSteps(KvBlocks):
    name: str
    cost: StepModel
    noise: NoiseStream
    policy: EnginePolicy
    running: list[SimRequest]
    max_num_seqs: int
    max_num_batched_tokens: int
    total_blocks: int
    steps: int
    step_end: float
    _step_start: float
    _listeners: list[Callable[[StepRecord], None]]
    _macro: tuple[int, int, list[float], list[float]] | None  # n, S0, ends, durs

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
