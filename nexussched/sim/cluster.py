"""Discrete-event simulation of N engines behind a routing policy, on simulated time.

Events: request arrivals (from the trace), engine step ends, and timers (policy ticks and delayed
deliveries). Deterministic for a given seed: ties break by insertion order, engines draw noise from
their own seeded streams.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..engine_sched.base import EnginePolicy
from ..perfmodel.telemetry import StepRecord
from ..router.policies.base import Move, NoEngineAvailable, RequestInfo, RoutingPolicy
from ..traces.types import Trace
from .engine import EngineConfig, EngineSim
from .hardware import HardwareProfile
from .request import SimRequest


class SimEngineView:
    """An engine as a routing policy sees it (the same fields the live router scrapes)."""

    __slots__ = ("engine", "name", "healthy", "sent")

    def __init__(self, engine: EngineSim) -> None:
        self.engine = engine
        self.name = engine.name
        self.healthy = True
        self.sent = 0  # requests routed here and not finished (the router's in-flight count)

    @property
    def num_running(self) -> int:
        return len(self.engine.running)

    @property
    def num_waiting(self) -> int:
        return len(self.engine.waiting)

    @property
    def kv_usage(self) -> float:
        return self.engine.kv_usage

    @property
    def inflight(self) -> int:
        return self.sent

    def queued_prefill_tokens(self) -> int:
        return self.engine.queued_prefill_tokens()

    def decode_ctx_sum(self) -> int:
        return self.engine.decode_ctx_sum()

    @property
    def max_num_batched_tokens(self) -> int:
        return self.engine.max_num_batched_tokens

    @property
    def free_blocks(self) -> int:
        return self.engine.free_blocks

    @property
    def block_size(self) -> int:
        return self.engine.block_size


@dataclass
class SimResult:
    requests: list[SimRequest]
    engines: list[EngineSim]
    sim_time: float
    rejected: int = 0
    moves: int = 0
    extra: dict = field(default_factory=dict)


class ClusterSim:
    """N engines + one routing policy. `engine_policy(i, name)` builds each engine's policy."""

    def __init__(
        self,
        profiles: Sequence[HardwareProfile],
        routing: RoutingPolicy,
        engine_policy: Callable[[int, str], EnginePolicy] | None = None,
        seed: int = 0,
        engine_config: EngineConfig | None = None,
        telemetry: Callable[[StepRecord], None] | None = None,
        kv_link_gbs: float = 25.0,
    ) -> None:
        self.routing = routing
        # Disaggregated prefill (policies with `splits = True`, e.g. splitwise): KV caches move
        # from a prefill to a decode engine over a link of this many GB/s (200 Gb/s RDMA default).
        self.kv_link_gbs = kv_link_gbs
        self._splits = bool(getattr(routing, "splits", False))
        self._split_output: dict[object, int] = {}  # prefill-only requests -> real output length
        self.engines: list[EngineSim] = []
        for i, prof in enumerate(profiles):
            name = f"{prof.name}-{i}"
            pol = engine_policy(i, name) if engine_policy else None
            self.engines.append(
                EngineSim(
                    prof,
                    name=name,
                    seed=seed * 1000 + i,
                    config=engine_config,
                    policy=pol,
                    telemetry=self._telemetry_hook(i, telemetry),
                )
            )
        self.views = [SimEngineView(e) for e in self.engines]
        self._heap: list[tuple[float, int, int, int]] = []  # (end time, seq, engine, version)
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._version = [0] * len(self.engines)
        self._seq = 0
        self._next_arrival = math.inf
        self._by_id: dict[object, SimRequest] = {}
        self.now = 0.0
        self.moves = 0
        self.rejected = 0

    def _telemetry_hook(self, i: int, sink: Callable[[StepRecord], None] | None):
        observe = getattr(self.routing, "observe", None)
        if observe is None:
            return sink

        def hook(rec: StepRecord) -> None:
            observe(i, rec)
            if sink is not None:
                sink(rec)

        return hook

    # ---- actions available to cluster modes and policies --------------------------------------
    def dispatch(self, req: SimRequest, idx: int, now: float) -> None:
        eng = self.engines[idx]
        if not eng.fits(req.prompt, req.output):
            req.engine_name = eng.name
            self.rejected += 1
            return
        req.dispatch_time = now
        self.views[idx].sent += 1
        if self._splits and req.generated == 0 and self.routing.is_prefill(idx):  # type: ignore[attr-defined]
            self._split_output[req.id] = req.output
            req.output = 1  # the prefill engine computes the prompt and the first token only
        eng.enqueue(req, now)
        self._kick(idx, now)

    def _kick(self, idx: int, now: float) -> None:
        eng = self.engines[idx]
        if eng.busy:
            old = eng.step_end
            new = eng.truncate(now)
            if new != old:
                self._push_engine(idx, new)
            return
        end = eng.start_step(now, self._horizon())
        if end is not None:
            self._push_engine(idx, end)

    def _push_engine(self, idx: int, end: float) -> None:
        self._version[idx] += 1
        self._seq += 1
        heapq.heappush(self._heap, (end, self._seq, idx, self._version[idx]))

    def add_timer(self, at: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, fn))

    def _horizon(self) -> float:
        h = self._next_arrival
        if self._timers and self._timers[0][0] < h:
            h = self._timers[0][0]
        return h

    def apply_move(self, mv: Move, now: float) -> bool:
        req = self.engines[mv.src].remove_waiting(mv.req_id)
        if req is None:
            return False
        self.views[mv.src].sent -= 1
        req.moves += 1
        self.moves += 1
        self.dispatch(req, mv.dst, now)
        return True

    # ---- the event loop ----------------------------------------------------------------------
    def run(
        self,
        trace: Trace,
        slo_ttft: float,
        slo_tpot: float,
        progress: Callable[[int], None] | None = None,
    ) -> SimResult:
        reqs = [
            SimRequest(
                r.id,
                r.arrival,
                r.prompt_tokens,
                r.output_tokens,
                r.slo_ttft if r.slo_ttft is not None else slo_ttft,
                r.slo_tpot if r.slo_tpot is not None else slo_tpot,
                r.priority,
            )
            for r in trace.requests
        ]
        self._by_id = {r.id: r for r in reqs}
        routing = self.routing
        views = self.views
        engines = self.engines
        heap = self._heap
        timers = self._timers
        n = len(reqs)
        ai = 0
        self._next_arrival = reqs[0].arrival if n else math.inf
        tick = routing.tick_interval
        if tick and n:
            self.add_timer(reqs[0].arrival + tick, self._tick_fn(tick))
        last_report = 0
        while True:
            # skip stale engine events
            while heap and heap[0][3] != self._version[heap[0][2]]:
                heapq.heappop(heap)
            t_eng = heap[0][0] if heap else math.inf
            t_tmr = timers[0][0] if timers else math.inf
            t_arr = self._next_arrival
            if t_eng == math.inf and t_tmr == math.inf and t_arr == math.inf:
                break
            if t_eng <= t_arr and t_eng <= t_tmr:
                _, _, idx, _ = heapq.heappop(heap)
                self.now = t_eng
                eng = engines[idx]
                finished = eng.finish_step()
                for r in finished:
                    views[idx].sent -= 1
                    if self._split_output and r.id in self._split_output:
                        if self._handoff(r, idx, t_eng):
                            continue
                    routing.on_finish(r.id, idx, t_eng)
                if routing.holds:
                    self._offer(idx, t_eng)
                if not eng.busy:
                    end = eng.start_step(t_eng, self._horizon())
                    if end is not None:
                        self._push_engine(idx, end)
                    elif routing.holds:
                        self._offer(idx, t_eng)
            elif t_arr <= t_tmr:
                self.now = t_arr
                r = reqs[ai]
                ai += 1
                self._next_arrival = reqs[ai].arrival if ai < n else math.inf
                info = RequestInfo(
                    r.id, r.prompt, r.output, r.arrival, r.slo_ttft, r.slo_tpot, r.priority
                )
                try:
                    idx = routing.route(info, views, t_arr)
                except NoEngineAvailable:
                    self.rejected += 1
                    continue
                if idx is None:
                    for j, e in enumerate(engines):
                        if not e.busy:
                            self._offer(j, t_arr)
                else:
                    self.dispatch(r, idx, t_arr)
                if progress is not None and ai - last_report >= 500:
                    progress(ai - last_report)
                    last_report = ai
            else:
                at, _, fn = heapq.heappop(timers)
                self.now = at
                fn(at)
        if progress is not None and ai > last_report:
            progress(ai - last_report)
        return SimResult(reqs, engines, self.now, rejected=self.rejected, moves=self.moves)

    def kv_transfer_time(self, req: SimRequest, src: int) -> float:
        """Seconds to move a request's KV cache off engine `src` (world physics, not policy)."""
        kv_bytes = req.computed * self.engines[src].profile.model.kv_bytes_per_token
        return kv_bytes / (self.kv_link_gbs * 1e9)

    def _handoff(self, req: SimRequest, src: int, now: float) -> bool:
        """A prefill-only request finished on `src`. Unless it wanted one token, continue it on
        the decode engine the policy names, after the KV transfer, as a request whose prompt is
        computed and first token generated. True if it continues (not finished yet)."""
        req.output = self._split_output.pop(req.id)
        if req.generated >= req.output:
            return False
        dst = self.routing.decode_target(req.id, src, self.views, now)  # type: ignore[attr-defined]
        req.finish = math.nan
        if dst is None:
            dst = src  # no decode engine: keep decoding where the KV already is
        delay = 0.0 if dst == src else self.kv_transfer_time(req, src)
        self.add_timer(now + delay, lambda t: self.dispatch(req, dst, t))
        return True

    def _offer(self, idx: int, now: float) -> None:
        for info in self.routing.pull(idx, self.views, now):
            self.dispatch(self._by_id[info.id], idx, now)

    def _tick_fn(self, interval: float) -> Callable[[float], None]:
        def fn(now: float) -> None:
            for mv in self.routing.tick(self.views, now):
                self.apply_move(mv, now)
            if self._next_arrival < math.inf or any(e.busy for e in self.engines):
                self.add_timer(now + interval, fn)

        return fn
