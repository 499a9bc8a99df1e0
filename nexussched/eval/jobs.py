"""Run many small dependent searches over a process pool without barriers.

A *job* is a generator. It yields either a list of tasks (hashable tuples for `fn`), and is sent
back their results in order, or a `Spawn` of child jobs, and is sent back their return values.
Every job advances as soon as what it waits for is done, so one slow simulation holds up only the
search it belongs to, never a whole round. Identical tasks run once (results are memoised), and
ready tasks start costliest first (by `cost(task)`) so that the pool does not end on one long run.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Generator, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

Job = Generator[Any, Any, Any]


class Urgent(list):
    """Yielded by a job instead of a plain list: tasks that gate other work (a search step whose
    result decides what runs next) start before every ordinary task."""


@dataclass
class Spawn:
    """Yielded by a job: run these child jobs; the parent gets their return values."""

    jobs: Sequence[Job]


@dataclass(eq=False)
class _Node:
    gen: Job
    parent: _Node | None
    slot: int  # index of this node's return value in its parent's results
    pending: int = 0
    results: list = field(default_factory=list)


class JobRunner:
    """Runs jobs; `fn(task)` must be a module-level function (it runs in worker processes)."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        workers: int = 0,
        cost: Callable[[Any], float] | None = None,
        progress: Callable[[int, int], None] | None = None,
        key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        self.fn = fn
        self.key = key or (lambda t: t)
        self.workers = workers or (os.cpu_count() or 1)
        self.cost = cost or (lambda t: 0.0)
        self.progress = progress
        self.cache: dict[Hashable, Any] = {}
        self.runs = 0  # tasks actually run (not served from the cache)
        self.cpu_s = 0.0  # the CPU seconds they reported, when fn returns (result, cpu_s)

    def run(self, jobs: Sequence[Job]) -> list:
        """Run the jobs to completion; their return values, in order."""
        root = _Node(iter(()), None, 0)  # type: ignore[arg-type]
        waiting: dict[Hashable, list[tuple[_Node, int]]] = {}  # key -> (node, index) to fill
        ready: list[tuple[float, int, Hashable]] = []  # heap of (-cost, seq, key)
        task_of: dict[Hashable, Any] = {}
        seq = 0
        inflight: dict[Future, Hashable] = {}  # future -> key
        pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None

        def need(node: _Node, tasks: Sequence[Hashable], urgent: bool = False) -> None:
            nonlocal seq
            node.results = [None] * len(tasks)
            node.pending = len(tasks)
            if not tasks:
                advance(node, [])
                return
            for i, t in enumerate(tasks):
                k = self.key(t)
                if k in self.cache:
                    fill(node, i, self.cache[k])
                    continue
                first = k not in waiting
                waiting.setdefault(k, []).append((node, i))
                if first:
                    task_of[k] = t
                    heapq.heappush(ready, (-self.cost(t) - (1e18 if urgent else 0.0), seq, k))
                    seq += 1

        def fill(node: _Node, i: int, value: Any) -> None:
            node.results[i] = value
            node.pending -= 1
            if node.pending == 0:
                advance(node, node.results)

        def start(node: _Node, children: Sequence[Job]) -> None:
            node.results = [None] * len(children)
            node.pending = len(children)
            if not children:
                advance(node, [])
                return
            for k, g in enumerate(children):
                advance(_Node(g, node, k), None)

        def advance(node: _Node, value: Any) -> None:
            if node is root:
                return  # every job is done; root.results holds their values
            try:
                out = node.gen.send(value)
            except StopIteration as stop:
                if node.parent is not None:
                    fill(node.parent, node.slot, stop.value)
                return
            if isinstance(out, Spawn):
                start(node, list(out.jobs))
            else:
                need(node, list(out), isinstance(out, Urgent))

        def finish(k: Hashable, value: Any) -> None:
            self.cache[k] = value
            for node, i in waiting.pop(k):
                fill(node, i, value)

        try:
            start(root, list(jobs))
            done_n = 0
            while ready or inflight:
                while ready and (pool is None or len(inflight) < self.workers):
                    _, _, k = heapq.heappop(ready)
                    t = task_of.pop(k)
                    if pool is None:
                        finish(k, self._call(t))
                        done_n += 1
                        self._report(done_n, len(ready))
                    else:
                        inflight[pool.submit(self.fn, t)] = k
                if not inflight:
                    continue
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for f in finished:
                    k = inflight.pop(f)
                    finish(k, self._unpack(f.result()))
                    done_n += 1
                    self._report(done_n, len(ready) + len(inflight))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return root.results

    def _call(self, t: Hashable) -> Any:
        return self._unpack(self.fn(t))

    def _unpack(self, out: Any) -> Any:
        self.runs += 1
        value, cpu = out
        self.cpu_s += cpu
        return value

    def _report(self, done: int, queued: int) -> None:
        if self.progress is not None:
            self.progress(done, queued)
