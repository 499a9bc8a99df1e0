"""Count-based baselines: round robin and least load."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy


class RoundRobin(RoutingPolicy):
    """Cycle through healthy engines, ignoring their load."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        n = len(engines)
        for k in range(n):
            i = (self._next + k) % n
            if engines[i].healthy:
                self._next = i + 1
                return i
        raise NoEngineAvailable("no healthy engine")


class LeastLoad(RoutingPolicy):
    """Fewest queued + running requests, counted as of now rather than as of the last scrape.

    `signal="scrape"` (default): an engine's load is its scraped running + waiting plus the
    requests this router sent it since that scrape, less those that finished since (a scrape is
    up to SCRAPE_PERIOD old: without the correction an engine whose requests just finished looks
    busy until the next scrape, and every request herds onto the other one), and never below the
    router's own count in flight. `signal="inflight"`: the router's own count in flight only (what
    one router in front of its engines knows exactly; other routers' requests are unseen).
    Ties go to a random engine among the least loaded (seeded), so equal engines fill evenly
    without the lockstep of a rotating offset. `sample=k` (k >= 2): the least loaded of k healthy
    engines drawn at random ("power of k choices"); 0 compares them all.
    """

    name = "least_load"

    def __init__(self, seed: int = 0, signal: str = "scrape", sample: int = 0) -> None:
        if signal not in ("scrape", "inflight"):
            raise ValueError(f"least_load signal must be 'scrape' or 'inflight', not {signal!r}")
        if sample < 0 or sample == 1:
            raise ValueError(f"least_load sample must be 0 (all engines) or >= 2, not {sample}")
        self._rng = random.Random(seed)
        self._scraped = signal == "scrape"
        self._sample = sample
        self._scrape: list[float | None] = []  # last_scrape each correction counts from
        self._delta: list[int] = []  # sends - finishes since that scrape

    def _grow(self, n: int) -> None:
        while len(self._delta) < n:
            self._scrape.append(None)
            self._delta.append(0)

    def _load(self, i: int, e: EngineView) -> int:
        if not self._scraped:
            return e.inflight
        ls = getattr(e, "last_scrape", None)
        if ls != self._scrape[i]:
            self._scrape[i] = ls
            self._delta[i] = 0
        load = e.num_running + e.num_waiting + self._delta[i]
        inf = e.inflight
        return inf if inf > load else load

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        n = len(engines)
        if len(self._delta) < n:
            self._grow(n)
        rng = self._rng
        cand: Sequence[int] = range(n)
        if self._sample and n > self._sample:
            up = [i for i in range(n) if engines[i].healthy]
            if len(up) > self._sample:
                cand = rng.sample(up, self._sample)
        best = -1
        best_load = 1 << 62
        ties = 0
        for i in cand:
            e = engines[i]
            if not e.healthy:
                continue
            load = self._load(i, e)
            if load < best_load:
                best_load = load
                best = i
                ties = 1
            elif load == best_load:
                ties += 1
                if rng.random() * ties < 1.0:  # uniform among the ties (reservoir)
                    best = i
        if best < 0:
            raise NoEngineAvailable("no healthy engine")
        self._delta[best] += 1
        return best

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        if idx < len(self._delta):
            self._delta[idx] -= 1
