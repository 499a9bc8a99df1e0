"""Count-based baselines: round robin and least load."""

from __future__ import annotations

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
    """Fewest queued + running requests (the larger of the engine's count and the router's).

    Ties rotate so that a cluster of idle engines is filled evenly rather than from index 0.
    """

    name = "least_load"

    def __init__(self) -> None:
        self._offset = 0

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        n = len(engines)
        best = -1
        best_load = 1 << 62
        off = self._offset
        for k in range(n):
            i = (off + k) % n
            e = engines[i]
            if not e.healthy:
                continue
            load = e.num_running + e.num_waiting
            inf = e.inflight
            if inf > load:
                load = inf
            if load < best_load:
                best_load = load
                best = i
        if best < 0:
            raise NoEngineAvailable("no healthy engine")
        self._offset = (off + 1) % n
        return best
