"""PRISM's re-binding: every `tick_interval`, requests queued at an engine but not started move
to an engine that would now serve them sooner (the general form of FastDeploy's "idle node steals
work"), at most `max_moves` times each, unless the context they have cached where they are is
worth more than the time saved (`move_cost`). A mixin of the Prism policy (prism.py): it uses
Prism's state and its `_bind`."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from .base import EngineView, Move
from .prism_config import INF
from .prism_engine import ReqState


class Rebinding:
    """Prism's tick(): moves of queued requests between engines."""

    def tick(self, engines: Sequence[EngineView], now: float) -> list[Move]:
        # KV sizes too: an engine whose telemetry came before its first request (so route() never
        # saw it new) or whose cache_config_info came with a later scrape
        self._sync(engines)
        self._sync_clocks(engines, now)
        if not self.cfg.rebind or self.cfg.max_moves == 0:
            return []
        moves: list[Move] = []
        gain = self.cfg.rebind_gain
        for src, v in enumerate(engines):
            if src >= len(self._eng):
                break
            es = self._eng[src]
            waiting = es.queued(v)
            if waiting == 0 or es.U - now <= gain:
                continue
            # the newest `waiting` requests sent here have not started (vLLM admits FCFS)
            for r in list(islice(reversed(es.flights.values()), waiting)):
                if r.moves >= self.cfg.max_moves or r.hopeless:
                    continue
                here = es.U - now  # at the tail of the queue, it starts after everything ahead
                dst, t, cost = self._best_other(r, src, engines, now)
                if dst < 0 or here - t < gain:
                    break  # the older ones are further ahead: they would gain less
                if here - cost < gain:
                    continue  # its cached context here is worth more than the time saved
                if now + t * self.cfg.ttft_margin > r.deadline:
                    # late even there: a move would only send it to the back of another queue
                    # (where, under load, it can starve) for no SLO gained
                    continue
                es.drop(r)
                es.U -= r.work
                es.V -= r.pace
                es.dv -= r.pace
                if not es.paced:
                    es.du -= r.work
                r.moves += 1
                self._bind(r, dst, now)
                moves.append(Move(r.info.id, src, dst))
                self.moves += 1
        return moves

    def _best_other(
        self, r: ReqState, src: int, engines: Sequence[EngineView], now: float
    ) -> tuple[int, float, float]:
        """The best engine to move queued r to: (engine, its predicted TTFT there, that TTFT
        plus move_cost x the extra prefill compute the move causes, which ranks them)."""
        best, best_t, best_c = -1, INF, INF
        k = self.cfg.move_cost
        h = r.hit(src)
        for i, e in enumerate(self._eng[: len(engines)]):
            if i == src or not engines[i].healthy or not self._room(e, r, now):
                continue
            t = c = self._ttft(e, r, now)
            if k and r.hit(i) < h:  # recomputing there what is cached here
                c += k * (e.prefill_work(r.prompt, r.hit(i)) - e.prefill_work(r.prompt, h))
            if c < best_c:
                best, best_t, best_c = i, t, c
        return best, best_t, best_c
