"""The simulated engine's per-step schedulers: vLLM V1's own (FCFS) and an engine policy's plan.

A mixin of EngineSim (engine.py). Both fill `self._batch` with (request, tokens this step),
allocating KV blocks (kv_blocks.py) and preempting from the tail of the running list when they
run out."""

from __future__ import annotations

from ..engine_sched.plan import StepPlan
from .kv_blocks import KvBlocks
from .request import SimRequest


class VllmScheduler(KvBlocks):
    running: list[SimRequest]
    max_num_seqs: int
    _batch: list[tuple[SimRequest, int]]

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
            self._grow(r, n, extra, cache, bs)
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
            self._grow(r, n, extra, cache, bs)
            batch.append((r, n))
            budget -= n
        self._batch = batch

    def _grow(self, r, n: int, extra: int, cache, bs: int) -> None:
        """Give r the `extra` KV blocks its next `n` tokens need, and seal the prompt blocks they
        complete into the prefix cache."""
        self.free_blocks -= extra
        r.blocks += extra
        if cache is not None:
            if extra:
                cache.take(extra)
            if r.hashes and (r.computed + n) // bs > r.sealed:
                self._seal(r, r.computed + n)
