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
from ..router.policies.base import Move, NoEngineAvailable, RoutingPolicy
from ..router.policies.prism import SloUnattainable
from ..router.policies.view import SCRAPE_PERIOD, TELEMETRY_POLL
from ..traces.types import Trace
from .arrivals import arrival_info, sim_requests
from .engine import EngineConfig, EngineSim
from .hardware import HardwareProfile
from .request import (
    EXPIRED,
    MAX_TOKENS_DEFAULT,
    REJECTED,
    SHED,
    TIMEOUT,
    SimRequest,
    parse_max_tokens,
)
from .views import ScrapeClock, make_views

STALL_OFFERS = 2000  # offer rounds with nothing running or arriving before a run is declared stuck


@dataclass
class SimResult:
    requests: list[SimRequest]
    engines: list[EngineSim]
    sim_time: float
    rejected: int = 0
    moves: int = 0
    extra: dict = field(default_factory=dict)


class ClusterSim:
    """N engines + one routing policy. `engine_policy(i, name)` builds each engine's policy.

    The policy sees the engines through views (sim/views.py): `view="live"` (the default) gives
    it what the live router has, gauges scraped every `scrape_period` s and step telemetry
    delivered in polls every TELEMETRY_POLL s, `telemetry_delay` s after each step ends;
    `view="oracle"` gives exact, instant state and telemetry (an ablation).

    Requests declare `max_tokens` (`max_tokens="cap:N"`: every client asks for N and longer
    outputs are cut there; "exact": each declares its true length, an ablation). Policies see only
    the declaration; the engine learns the true length when the request ends, and the policy then
    learns it too (`on_output`, as the live router counts the tokens it relays).
    """

    def __init__(
        self,
        profiles: Sequence[HardwareProfile],
        routing: RoutingPolicy,
        engine_policy: Callable[[int, str], EnginePolicy] | None = None,
        seed: int = 0,
        engine_config: EngineConfig | None = None,
        telemetry: Callable[[StepRecord], None] | None = None,
        kv_link_gbs: float = 25.0,
        view: str = "live",
        scrape_period: float = SCRAPE_PERIOD,
        telemetry_delay: float = 0.0,
        client_timeout: float | None = None,
        max_tokens: str = MAX_TOKENS_DEFAULT,
    ) -> None:
        if not telemetry_delay >= 0 or not math.isfinite(telemetry_delay):
            raise ValueError(f"telemetry delay must be >= 0 seconds, got {telemetry_delay!r}")
        self.routing = routing
        # A client that has no first token this many seconds after sending gives up and
        # disconnects; its request is cancelled wherever it is (None or 0: clients wait forever).
        self.client_timeout = client_timeout if client_timeout and client_timeout > 0 else None
        self.view = view
        # what clients declare: each request's true length (exact) or one cap for all (cap:N)
        self.max_tokens_cap = parse_max_tokens(max_tokens)
        self.telemetry_delay = telemetry_delay
        # step records on their way to the policy: (time it may see them, engine, record)
        self._tele_buf: list[tuple[float, int, StepRecord]] = []
        live_tele = view != "oracle" and hasattr(routing, "observe")
        self._tele_due = 0.0 if live_tele else math.inf
        # Disaggregated prefill (policies with `splits = True`, e.g. splitwise): KV caches move
        # from a prefill to a decode engine over a link of this many GB/s (200 Gb/s RDMA default).
        self.kv_link_gbs = kv_link_gbs
        self._splits = bool(getattr(routing, "splits", False))
        # prefill-only requests -> (true output length, declared max_tokens)
        self._split_output: dict[object, tuple[int, int]] = {}
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
                    kv_events=self._kv_hook(i),
                )
            )
        if type(routing).on_first_token is not RoutingPolicy.on_first_token:
            for e in self.engines:
                e.first_tokens = []  # the router sees answers start (their first bytes)
        self.views = make_views(self.engines, view, lambda: self.now)
        self._scrapes = ScrapeClock(self.views, 0.0 if view == "oracle" else scrape_period)
        self._counted: dict[object, tuple[int, int, int]] = {}  # id -> (engine, prompt, max_tokens)
        self._heap: list[tuple[float, int, int, int]] = []  # (end time, seq, engine, version)
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._version = [0] * len(self.engines)
        self._seq = 0
        self._next_arrival = math.inf
        self._by_id: dict[object, SimRequest] = {}
        self.now = 0.0
        self.moves = 0
        self.rejected = 0

    def _kv_hook(self, i: int) -> Callable[[str, list[int]], None] | None:
        """KV events (vLLM's BlockStored / BlockRemoved, as the engine publishes them) for a
        policy that consumes them (`kv_event(idx, kind, hashes)`)."""
        consume = getattr(self.routing, "kv_event", None)
        if consume is None:
            return None

        def hook(kind: str, hashes: list[int]) -> None:
            consume(i, kind, hashes)

        return hook

    def _telemetry_hook(self, i: int, sink: Callable[[StepRecord], None] | None):
        observe = getattr(self.routing, "observe", None)
        if observe is None:
            return sink

        if self.view == "oracle":

            def hook(rec: StepRecord) -> None:
                observe(i, rec)
                if sink is not None:
                    sink(rec)

            return hook

        buf = self._tele_buf
        delay = self.telemetry_delay

        def delayed(rec: StepRecord) -> None:
            buf.append((rec.t + rec.duration + delay, i, rec))
            if sink is not None:
                sink(rec)

        return delayed

    def _poll_telemetry(self, t: float) -> None:
        """The router's telemetry polls due by `t`: each hands the policy the records that
        reached the engine's feed by then (the last poll at or before t stands for them all:
        nothing reads the policy between two events)."""
        poll = TELEMETRY_POLL
        at = math.floor(t / poll) * poll
        buf = self._tele_buf
        observe = self.routing.observe  # type: ignore[attr-defined]
        if buf:
            keep = []
            for item in buf:
                if item[0] <= at:
                    observe(item[1], item[2])
                else:
                    keep.append(item)
            buf[:] = keep
        self._tele_due = at + poll

    def _count(self, req: SimRequest, idx: int) -> None:
        """The router sent `req` to engine `idx`: its in-flight counts grow."""
        p, m = req.prompt, req.max_tokens
        self._counted[req.id] = (idx, p, m)
        self.views[idx].count(p, m, 1)

    def _uncount(self, req: SimRequest) -> None:
        c = self._counted.pop(req.id, None)
        if c is not None:
            self.views[c[0]].count(c[1], c[2], -1)

    # ---- actions available to cluster modes and policies --------------------------------------
    def dispatch(self, req: SimRequest, idx: int, now: float) -> None:
        if req.failure is not None:
            return  # its client left while it was on its way (a delayed hand-off)
        eng = self.engines[idx]
        if not eng.fits(req.prompt, req.max_tokens):
            # the engine answers 400, as vLLM does for a request beyond its context or KV cache
            req.engine_name = eng.name
            self._fail(req, REJECTED, eng.refusal(req.prompt, req.max_tokens))
            return
        req.dispatch_time = now
        req.engine_idx = idx
        self._count(req, idx)
        if self._splits and req.generated == 0 and self.routing.is_prefill(idx):  # type: ignore[attr-defined]
            self._split_output[req.id] = (req.output, req.max_tokens)
            # the prefill engine computes the prompt and the first token only (max_tokens=1)
            req.output = req.max_tokens = 1
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

    def _fail(self, req: SimRequest, kind: str, message: str) -> None:
        req.fail(kind, message)
        if kind in (REJECTED, SHED):
            self.rejected += 1

    def refusal(self, req: SimRequest) -> str | None:
        """Why no engine of the cluster could ever hold `req` (None if one can): refused at
        admission, as the live router answers 400 context_length_exceeded."""
        if any(e.fits(req.prompt, req.max_tokens) for e in self.engines):
            return None
        kv = max(e.total_blocks * e.block_size for e in self.engines)
        mml = max(e.max_model_len for e in self.engines)
        return (
            f"no engine can hold a request of {req.prompt + req.max_tokens} tokens ({req.prompt} "
            f"prompt + {req.max_tokens} max_tokens): the largest KV cache holds {kv} tokens, the "
            f"largest max_model_len is {mml}"
        )

    def cancel(self, req: SimRequest, now: float, kind: str = TIMEOUT, message: str = "") -> None:
        """Its client left: drop it wherever it is (router queue, engine queue, running) and
        free its KV blocks, as a disconnect aborts a request in vLLM."""
        idx = req.engine_idx
        self._split_output.pop(req.id, None)
        if idx >= 0:
            eng = self.engines[idx]
            eng.cancel(req)
            self._uncount(req)
            self.routing.on_finish(req.id, idx, now)
            req.fail(kind, message)
            if not eng.busy:
                self._kick(idx, now)  # its freed blocks may let a waiting request in
        else:
            self.routing.cancel(req.id)
            req.fail(kind, message)

    def _take_dropped(self) -> None:
        for d in self.routing.take_dropped():
            r = self._by_id.get(d.req_id)
            if r is not None and not r.ended:
                self._fail(r, EXPIRED if d.reason == "expired" else REJECTED, d.message)

    def apply_move(self, mv: Move, now: float) -> bool:
        req = self.engines[mv.src].remove_waiting(mv.req_id)
        if req is None:
            return False
        req.engine_idx = -1
        self._uncount(req)
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
        reqs = sim_requests(trace, self.max_tokens_cap, slo_ttft, slo_tpot)
        self._by_id = {r.id: r for r in reqs}
        routing = self.routing
        views = self.views
        engines = self.engines
        heap = self._heap
        scrapes = self._scrapes
        timers = self._timers
        n = len(reqs)
        ai = 0
        bs = engines[0].block_size if engines else 16
        caching = any(e.cache is not None for e in engines)
        treqs = trace.requests
        self._next_arrival = reqs[0].arrival if n else math.inf
        tick = routing.tick_interval
        if tick and n:
            self.add_timer(reqs[0].arrival + tick, self._tick_fn(tick))
        if routing.holds and n:
            every = tick or 0.05  # the live router's offer loop (service.PolicyDispatcher)
            self.add_timer(reqs[0].arrival + every, self._offer_fn(every))
        last_report = 0
        # client timeouts: deadlines come in arrival order (one timeout for all), so a cursor over
        # the requests in arrival order finds the next one without a timer per request
        timeout = self.client_timeout
        by_arrival = sorted(reqs, key=lambda q: q.arrival) if timeout else []
        ti = 0
        while True:
            # skip stale engine events
            while heap and heap[0][3] != self._version[heap[0][2]]:
                heapq.heappop(heap)
            t_eng = heap[0][0] if heap else math.inf
            t_tmr = timers[0][0] if timers else math.inf
            t_arr = self._next_arrival
            t_to = math.inf
            if timeout:
                while ti < n and (
                    by_arrival[ti].failure is not None
                    or by_arrival[ti].first_token == by_arrival[ti].first_token
                ):
                    ti += 1
                if ti < n:
                    t_to = by_arrival[ti].arrival + timeout
            if t_eng == math.inf and t_tmr == math.inf and t_arr == math.inf:
                # Nothing can happen any more: what has not ended is stranded (a liveness bug),
                # and reported so rather than hidden behind its client's timeout.
                break
            t = min(t_eng, t_tmr, t_arr, t_to)
            if t >= scrapes.due:
                scrapes.advance(t)
            if t >= self._tele_due:
                self._poll_telemetry(t)
            if t_to < t_eng and t_to < t_arr and t_to < t_tmr:
                self.now = t_to
                self.cancel(
                    by_arrival[ti],
                    t_to,
                    TIMEOUT,
                    f"client gave up after {timeout:g}s without a first token",
                )
                continue
            if t_eng <= t_arr and t_eng <= t_tmr:
                _, _, idx, _ = heapq.heappop(heap)
                self.now = t_eng
                eng = engines[idx]
                finished = eng.finish_step()
                started = eng.first_tokens
                if started:
                    for r in started:
                        if r.failure is None:
                            routing.on_first_token(r.id, idx, t_eng)
                    started.clear()
                for r in finished:
                    if r.failure is not None:
                        continue  # cancelled by its client during the step (books closed then)
                    self._uncount(r)
                    if self._split_output and r.id in self._split_output:
                        if self._handoff(r, idx, t_eng):
                            continue
                    r.hashes = ()  # only live requests need them (memory)
                    routing.on_end(r.id, idx, t_eng, r.generated)  # on_output, on_finish
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
                tr = treqs[ai]
                ai += 1
                self._next_arrival = reqs[ai].arrival if ai < n else math.inf
                why = self.refusal(r)
                if why is not None:
                    self._fail(r, REJECTED, why)
                    continue
                info = arrival_info(r, tr, bs, caching)
                try:
                    idx = routing.route(info, views, t_arr)
                except SloUnattainable as e:
                    self._fail(r, SHED, str(e))
                    continue
                except NoEngineAvailable as e:
                    self._fail(r, REJECTED, str(e) or "no engine available")
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
        req.output, req.max_tokens = self._split_output.pop(req.id)
        if req.generated >= req.output:
            return False
        dst = self.routing.decode_target(req.id, src, self.views, now)  # type: ignore[attr-defined]
        req.finish = math.nan
        if dst is None:
            dst = src  # no decode engine: keep decoding where the KV already is
        delay = 0.0 if dst == src else self.kv_transfer_time(req, src)
        self.add_timer(now + delay, lambda t: self.dispatch(req, dst, t))
        return True

    def _offer(self, idx: int, now: float) -> int:
        got = self.routing.pull(idx, self.views, now)
        for info in got:
            self.dispatch(self._by_id[info.id], idx, now)
        self._take_dropped()
        return len(got)

    def _offer_fn(self, interval: float) -> Callable[[float], None]:
        """Every `interval`, offer each engine the held requests (as the live router's offer loop
        does): a policy that waits for a scrape to show its engine has taken what it was sent
        gets to hand over more although no engine event comes. Stops once everything is idle and
        a scrape period has passed without a hand-over, unless the policy still holds requests:
        an idle engine may take them later (a clock of the policy's catching up). With nothing
        else happening, STALL_OFFERS rounds that place nothing end the run, leaving what is held
        stranded (a liveness bug, reported as such)."""
        last = [0.0]
        grace = self._scrapes.period + interval
        stalled = [0]

        def fn(now: float) -> None:
            got = 0
            for j in range(len(self.engines)):
                got += self._offer(j, now)
            if got or self._next_arrival < math.inf or any(e.busy for e in self.engines):
                last[0] = now
                stalled[0] = 0
            held = self.routing.held
            if held:
                stalled[0] += 1
            if now - last[0] <= grace or (held and stalled[0] < STALL_OFFERS):
                self.add_timer(now + interval, fn)

        return fn

    def _tick_fn(self, interval: float) -> Callable[[float], None]:
        def fn(now: float) -> None:
            for mv in self.routing.tick(self.views, now):
                self.apply_move(mv, now)
            if self._next_arrival < math.inf or any(e.busy for e in self.engines):
                self.add_timer(now + interval, fn)

        return fn
