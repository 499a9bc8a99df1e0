"""PRISM: predictive, state-driven routing with late binding and re-binding.

For each request and each engine PRISM predicts, with that engine's own learned step-time model
(one PerfModel per engine, fitted online from the engine's step telemetry), the request's TTFT
there and the step time the engine's decodes would see with it added. It never reads a hardware
profile: a cold engine looks like every other cold engine until its telemetry says otherwise.

Per engine it keeps, besides the model:
- U ("busy until"): when the engine will have prefilled the work ahead of a new request, at the
  pace its telemetry shows (the share of a busy step's time its prefills get). A request's
  predicted TTFT there is max(U - now, 0) + its own prefill time.
- V, a pacing clock, for engines that let queued prefills stretch their decodes' steps (vLLM's
  default batching: while prefills queue, its decodes' steps run far beyond the TPOT target).
  Prefill work is admitted to such an engine at a rate that leaves its decodes' predicted step
  time within the TPOT target: a share rho = 1 - decode_step / target; sending work w advances V
  by w / rho, and the engine has room while V <= now + slack ("without breaking the others").
  An engine whose decodes keep their pace while prefills queue (an SLO-aware planner such as
  LENS) is not paced twice: it gets a deep queue, which it orders itself; there, U counts only the
  work of queued requests that can still meet their TTFT, since such a planner serves late ones
  last.

The request goes to the engine with room that gives the lowest predicted TTFT, ties going to the
one with the most headroom. When no engine has room it waits at the router (late binding, `holds`)
and is handed to the first engine that has room for it and can still meet its TTFT (pull()).
Held requests are ordered by priority (lower first, as vLLM), then by `order` (edf: earliest TTFT
deadline; lifo: newest first; cost: least work first). One that can no longer meet its TTFT on any
engine is served only from spare room, so it does not delay requests that still can. Every
`tick_interval`, requests queued at an engine but not started move to an engine that would now
serve them sooner (the general form of FastDeploy's work stealing), at most `max_moves` times
each. With `shed`, a request whose TTFT no engine can meet is refused (SloUnattainable: 429).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from itertools import islice

from ...perfmodel.lengths import LengthEstimator
from ...perfmodel.model import PerfModel, PerfModelConfig
from ...perfmodel.telemetry import StepRecord
from .base import EngineView, Move, NoEngineAvailable, RequestInfo, RoutingPolicy
from .prefix_index import BLOCK_TOKENS, PrefixIndex
from .view import kv_capacity_tokens

INF = math.inf
ORDERS = ("edf", "lifo", "cost")
MIXED_MIN = 20  # steps mixing decodes and prefill seen before an engine's pace is trusted


class SloUnattainable(NoEngineAvailable):
    """No engine can meet the request's SLO (admission control; the live router answers 429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class PrismConfig:
    """PRISM's knobs (`nexussched tune` searches the numeric ones)."""

    tpot_margin: float = 0.85  # pace decodes' predicted step time to this share of the TPOT SLO
    slack: float = 0.5  # s of paced prefill work an engine may run ahead of real time
    queue_limit: float = 1.0  # s of predicted prefill backlog a router-paced engine may hold
    self_paced_queue: float = INF  # the same for an engine that paces prefills itself
    min_share: float = 0.05  # smallest prefill share of an engine with decodes to protect
    # An engine whose decodes keep their TPOT pace while it has queued prefills (an SLO-aware
    # planner) paces itself; one whose decodes slow beyond this x TPOT SLO then (vLLM's default,
    # which runs its whole token budget of prefill next to them) is paced by PRISM.
    self_paced_itl: float = 1.0
    late_binding: bool = True  # hold requests at the router until an engine has room
    # Room is KV room (an engine would start the request now). With hold_for_pace, an engine
    # whose prefills PRISM paces, whose predicted backlog is past the queue limit, or whose decodes
    # are at the TPOT cap also has no room: requests wait at the router for pace. Off by default:
    # holding a request an engine could run costs TTFT where there is nothing to choose (one
    # engine, or all equally loaded); on, it protects TPOT on vLLM-default engines in overload.
    hold_for_pace: bool = False
    order: str = "edf"  # held-queue order within a priority: edf | lifo | cost
    ttft_margin: float = 1.0  # scale on predicted TTFT in feasibility tests (>1: cautious)
    kv_cap: float = 0.95  # do not send work that would push predicted KV use past this
    scan: int = 8  # held requests one pull examines
    rebind: bool = True
    max_moves: int = 1  # re-bindings per request
    rebind_gain: float = 0.3  # s of predicted TTFT a move must save
    tick_interval: float = 0.05  # s between ticks (re-binding, resync with engine state)
    shed: bool = False  # refuse requests no engine can serve within their TTFT SLO
    retry_after: float = 1.0  # s, floor of the Retry-After hint of a refused request
    # Several router replicas: a random tie-break of up to this many seconds of predicted TTFT, so
    # replicas deciding at once on the same shared state spread instead of herding (0: off).
    jitter: float = 0.0
    seed: int = 0
    # Bounded unfairness: a late request held longer than this x its TTFT SLO is no longer served
    # only from spare room but sent on in arrival order, each to the engine that would serve it
    # soonest, room or not (inf: never)
    age_limit: float = 8.0
    decode_sample: int = 16  # learn from 1 in this many decode-only steps (all others are kept)
    # Predict each engine's prefix-cache hit for a request from a router-side index of the prompt
    # blocks sent there (sized by the engine's num_gpu_blocks) and fold it into the predicted
    # prefill time: only the uncached tail is computed, attending to the cached prefix.
    prefix_aware: bool = True
    # Where engines publish KV events (vLLM's BlockStored / BlockRemoved; engine-sim and the
    # simulator do), the index follows them: exact evictions instead of an LRU guess.
    kv_events: bool = True
    perf: PerfModelConfig = field(
        default_factory=lambda: PerfModelConfig(
            window=2048, half_life=1024, drift_ratio=1.5, drift_window=200
        )
    )

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"prism: order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name in ("tpot_margin", "ttft_margin", "kv_cap", "tick_interval", "self_paced_itl"):
            if not getattr(self, name) > 0:
                raise ValueError(f"prism: {name} must be positive, got {getattr(self, name)!r}")
        if self.slack < 0 or self.queue_limit < 0 or self.self_paced_queue < 0:
            raise ValueError("prism: slack, queue_limit and self_paced_queue must be >= 0")
        if not 0 <= self.min_share < 1:
            raise ValueError(f"prism: min_share must be in [0, 1), got {self.min_share!r}")
        if not self.age_limit > 0:
            raise ValueError(f"prism: age_limit must be positive, got {self.age_limit!r}")
        if self.max_moves < 0 or self.scan < 1:
            raise ValueError("prism: max_moves must be >= 0 and scan >= 1")


class _Req:
    """A request PRISM has seen: held at the router or in flight at an engine."""

    __slots__ = ("info", "prompt", "ctx", "deadline", "key", "engine", "moves", "hopeless", "work",
                 "pace", "bound", "hits")  # fmt: skip

    def __init__(self, info: RequestInfo, key: tuple, out: float) -> None:
        self.info = info
        self.prompt = max(1, int(info.prompt_tokens))
        # mean context of its decode steps (`out`: its expected output length): what it adds to
        # every step's KV reads
        self.ctx = self.prompt + out * 0.5
        self.deadline = info.arrival + info.slo_ttft
        self.key = key
        self.engine = -1
        self.moves = 0
        self.hopeless = False
        self.work = 0.0  # predicted prefill time at the engine it went to
        self.pace = 0.0  # how far it advanced that engine's pacing clock
        self.bound = -INF  # when it was sent to that engine
        self.hits: list[int] | None = None  # predicted cached prompt tokens per engine

    def hit(self, idx: int) -> int:
        h = self.hits
        return h[idx] if h is not None and idx < len(h) else 0


class _Engine:
    """PRISM's knowledge of one engine: its learned model, its observed pace, the two clocks."""

    __slots__ = ("model", "coef", "c0", "c1", "c2", "c3", "c4", "n", "ctx", "base", "pw", "pd",
                 "pi", "bl_w", "mixed", "U", "V", "kv_tokens", "kv_used", "flights", "steps",
                 "dskip", "dn", "dctx", "nn", "nctx", "kv_seen", "kv_new", "paced",
                 "bl_n", "backlogged", "rn", "rctx", "dv", "du", "shared", "idx", "pf")  # fmt: skip

    def __init__(self, model: PerfModel, idx: int = 0) -> None:
        self.idx = idx
        self.model = model
        self.coef = None
        self.n = 0  # requests in flight here (PRISM's own count)
        self.ctx = 0.0  # sum of their mean decode contexts
        # prefill share of busy steps that mix decodes and prefill (EWMA of sums), its pace
        self.pw = 0.0
        self.pd = 0.0
        self.pi = 1.0
        self.pf = 0.0  # prefill time per step with decodes (EWMA): what mixes into decode steps
        # token-weighted mean step time of its decodes while prefills queue (EWMA of sums)
        self.bl_w = 0.0
        self.bl_n = 0.0
        self.backlogged = 0
        self.mixed = 0
        self.paced = True  # PRISM paces its prefills (until telemetry shows it keeps TPOT pace)
        self.U = 0.0
        self.V = 0.0
        # several router replicas (PrismShare): the others' requests in flight here and their
        # contexts; the clock advances this replica made since it last shared them
        self.rn = 0
        self.rctx = 0.0
        self.dv = 0.0
        self.du = 0.0
        self.shared = False
        self.kv_tokens = INF
        self.kv_used = 0.0
        self.flights: dict[object, _Req] = {}  # in dispatch order
        self.steps = 0
        self.dskip = 0
        # decode load: the last step's (telemetry) plus what was sent here since that step
        self.dn = -1  # no telemetry yet: use PRISM's own in-flight count
        self.dctx = 0.0
        self.nn = 0
        self.nctx = 0.0
        # KV: the engine's reported use (tick) plus what was sent since
        self.kv_seen = -1.0
        self.kv_new = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model's coefficients after a refit (cheap: five evaluations)."""
        m = self.model
        self.coef = m.coef
        c4 = m.predict_step()
        self.c4 = c4
        self.c0 = m.predict_step(prefill_tokens=1.0) - c4
        self.c1 = m.predict_step(prefill_attn=1.0) - c4
        self.c2 = m.predict_step(num_decodes=1.0) - c4
        self.c3 = m.predict_step(decode_ctx_sum=1.0) - c4
        self._rebase()

    def _rebase(self) -> None:
        # A router-paced engine's queue is short, so what PRISM sent it is about to decode; a
        # self-paced one may queue much more than it runs, so its last step tells better.
        if self.dn < 0 or self.paced:
            self.base = self.c4 + self.c2 * (self.n + self.rn) + self.c3 * (self.ctx + self.rctx)
        else:
            self.base = self.c4 + self.c2 * (self.dn + self.nn) + self.c3 * (self.dctx + self.nctx)

    def seen_step(self, rec: StepRecord) -> None:
        """The batch of the engine's latest step: the decodes a new request would join."""
        self.dn = rec.num_decodes + len(rec.prefill_chunks)
        self.dctx = float(rec.decode_ctx_sum + sum(c + x for c, x in rec.prefill_chunks))
        self.nn = 0
        self.nctx = 0.0
        self._rebase()

    def kv_load(self) -> float:
        """Predicted KV tokens in use: reported use plus what was sent since, else own count."""
        if self.kv_seen < 0:
            return self.kv_used
        return self.kv_seen * self.kv_tokens + self.kv_new

    def add(self, r: _Req) -> None:
        self.flights[r.info.id] = r
        self.n += 1
        self.ctx += r.ctx
        self.kv_used += r.ctx
        self.nn += 1
        self.nctx += r.ctx
        self.kv_new += r.ctx
        self._rebase()

    def drop(self, r: _Req) -> None:
        if self.flights.pop(r.info.id, None) is None:
            return
        self.n -= 1
        self.ctx -= r.ctx
        self.kv_used -= r.ctx
        if self.n <= 0:
            self.n, self.ctx, self.kv_used = 0, 0.0, 0.0
        self._rebase()

    def prefill_work(self, p: int, hit: int = 0) -> float:
        """Predicted compute of a p-token prompt whose first `hit` tokens are cached here: the
        rest is computed, each token attending to the cached prefix and the tokens before it."""
        n = p - hit
        return self.c0 * n + self.c1 * n * (hit + n * 0.5)

    def prefill_time(self, p: int, base: float, hit: int = 0) -> float:
        """Predicted time to prefill p tokens (`hit` of them cached) here next to its decodes,
        plus the emitting step."""
        n = p - hit
        w = self.c0 * n + self.c1 * n * (hit + n * 0.5)
        return (w / self.pi if self.n + self.rn and base > self.c4 else w) + base


class Prism(RoutingPolicy):
    """Predictive SLO-aware routing. Keyword arguments are PrismConfig fields."""

    name = "prism"

    def __init__(self, config: PrismConfig | None = None, **kwargs: object) -> None:
        if config is None:
            names = {f.name for f in fields(PrismConfig)}
            bad = sorted(set(kwargs) - names)
            if bad:
                raise ValueError(f"prism: unknown option(s) {', '.join(bad)}")
            config = PrismConfig(**kwargs)  # type: ignore[arg-type]
        elif kwargs:
            raise ValueError("prism: give either a config or keyword options, not both")
        self.cfg = config
        self.uses_prefix = config.prefix_aware  # the live router hashes prompt blocks for it
        self.holds = config.late_binding
        self.tick_interval = config.tick_interval
        self._eng: list[_Engine] = []
        self._reqs: dict[object, _Req] = {}  # held or in flight, by id
        self._held: list[tuple[tuple, int, _Req]] = []  # sorted by (key, seq)
        self._hopeless: list[tuple[tuple, int, _Req]] = []
        self._seq = 0
        self._tpot_ref = 0.1  # running mean of requests' TPOT SLO (s)
        # output lengths of finished requests: a request's expected length given its max_tokens
        self.lengths = LengthEstimator()
        self.moves = 0
        self.shed = 0
        self._rng = random.Random(config.seed)
        self._prefix = PrefixIndex(None)  # prompt blocks sent to each engine (LRU)
        self._kv_fed: set[int] = set()  # engines whose KV events PRISM follows

    # ---- learning (transport-independent: the simulator, engine telemetry, the plane) -----------
    def _engine(self, idx: int) -> _Engine:
        while len(self._eng) <= idx:
            k = len(self._eng)
            self._eng.append(_Engine(PerfModel(self.cfg.perf, name=str(k)), k))
        return self._eng[idx]

    def observe(self, idx: int, rec: StepRecord) -> None:
        """One step record of engine `idx`: refine its model and its observed pace."""
        e = self._engine(idx)
        e.steps += 1
        # Decode-only steps outnumber the rest by far (a long decode run is thousands of them):
        # thinning them keeps the prefill terms identifiable in the model's sliding window.
        # A decode step the model mispredicts by more than 15% is always kept, so decode terms
        # stay right where prefill steps dominate what was kept (a slow engine's few long steps).
        if rec.prefill_chunks:
            e.model.observe(rec)
        else:
            e.dskip += 1
            if (
                e.dskip >= self.cfg.decode_sample
                or abs(e.c4 + e.c2 * rec.num_decodes + e.c3 * rec.decode_ctx_sum - rec.duration)
                > 0.15 * rec.duration
            ):
                e.dskip = 0
                e.model.observe(rec)
        if e.model.coef is not e.coef:
            e.refresh()
        e.seen_step(rec)
        tok = rec.prefill_tokens if rec.prefill_chunks else 0
        nd = rec.num_decodes
        if nd:  # prefill time per step with decodes, over every such step (decode-only: none)
            e.pf += ((e.c0 * tok + e.c1 * rec.prefill_attn if tok else 0.0) - e.pf) * 0.02
        if nd and tok:
            a = 0.02 if e.mixed > 50 else 1.0 / (e.mixed + 1)
            work = e.c0 * tok + e.c1 * rec.prefill_attn
            e.pw += (work - e.pw) * a
            e.pd += (rec.duration - e.pd) * a
            if e.pd > 0:
                e.pi = min(1.0, max(self.cfg.min_share, e.pw / e.pd))
            e.mixed += 1
        if nd and tok and rec.num_waiting:
            # what its decodes live through while prefills queue: does the engine keep their pace?
            a = 0.02 if e.backlogged > 50 else 1.0 / (e.backlogged + 1)
            e.bl_w += (rec.duration * nd - e.bl_w) * a
            e.bl_n += (nd - e.bl_n) * a
            e.backlogged += 1
            e.paced = (
                e.backlogged < MIXED_MIN
                or e.bl_w > e.bl_n * self._tpot_ref * self.cfg.self_paced_itl
            )

    def observe_segment(self, idx: int, x: tuple[float, ...], duration: float) -> None:
        """Several consecutive steps of engine `idx` seen only together (their summed batch
        features and total time; router/observed_feed.py): the model is linear in the features,
        so it learns from the sum as from one step."""
        e = self._engine(idx)
        e.steps += 1
        e.model.observe_features(x, duration)
        if e.model.coef is not e.coef:
            e.refresh()

    def kv_event(self, idx: int, kind: str, hashes: Sequence[int]) -> None:
        """A KV event of engine `idx`: it cached ("stored") or evicted ("removed") these blocks."""
        if not (self.cfg.prefix_aware and self.cfg.kv_events):
            return
        if idx not in self._kv_fed:
            self._kv_fed.add(idx)
            self._prefix.set_capacity(idx, None)  # its events say what leaves, not an LRU guess
        if kind == "stored":
            self._prefix.stored(idx, hashes)
        elif kind == "removed":
            self._prefix.removed(idx, hashes)

    def set_model(self, idx: int, model: PerfModel) -> None:
        """Use a model fitted elsewhere (another replica, the plane, a file) for engine `idx`."""
        e = self._engine(idx)
        e.model = model
        e.refresh()

    def model(self, idx: int) -> PerfModel:
        return self._engine(idx).model

    # ---- prediction -------------------------------------------------------------------------
    def _router_paced(self, e: _Engine) -> bool:
        """Whether PRISM must pace this engine's prefills (its steps do not keep the TPOT pace)."""
        return e.paced

    def _share(self, e: _Engine, base: float, cap: float) -> float:
        """Prefill share of wall time that keeps decodes' step time within `cap`."""
        if e.n + e.rn == 0:
            return 1.0
        return max(self.cfg.min_share, 1.0 - base / cap)

    def _room(self, e: _Engine, r: _Req, now: float) -> bool:
        """Has the engine room for r now: backlog, pacing, KV, and its decodes' step with r."""
        if r.prompt >= e.kv_tokens:
            return False
        if e.n + e.rn == 0:
            return True  # an idle engine always takes work it can hold
        if e.kv_load() + r.ctx > self.cfg.kv_cap * e.kv_tokens:
            return False
        if not self.cfg.hold_for_pace:
            return True
        if self._router_paced(e):
            if e.V > now + self.cfg.slack or e.U > now + self.cfg.queue_limit:
                return False
        elif e.U > now + self.cfg.self_paced_queue:
            return False
        cap = r.info.slo_tpot * self.cfg.tpot_margin * (1.0 - self.cfg.min_share)
        return e.base + e.c2 + e.c3 * r.ctx <= cap

    def _ttft(self, e: _Engine, r: _Req, now: float) -> float:
        wait = e.U - now
        return (wait if wait > 0 else 0.0) + e.prefill_time(
            r.prompt, e.base + e.c2 + e.c3 * r.ctx, r.hit(e.idx)
        )

    def predict(self, req: RequestInfo, idx: int, now: float) -> tuple[float, float]:
        """(predicted TTFT, predicted decode step time) of `req` if sent to engine `idx` now."""
        e = self._engine(idx)
        r = _Req(req, (), self._expected_output(req))
        if self.cfg.prefix_aware and req.prefix_hashes:
            r.hits = self._hits(req, len(self._eng))
        base = e.base + e.c2 + e.c3 * r.ctx
        # Its decode steps: the batch it joins, plus the prefill work an average step with decodes
        # carried lately (later arrivals' prefills mix into its steps; those queued ahead of it
        # are done before it starts, under vLLM's first-come-first-served admission).
        return self._ttft(e, r, now), base + e.pf

    # ---- routing ----------------------------------------------------------------------------
    def _expected_output(self, info: RequestInfo) -> float:
        """Expected output length of a new request: learned from finished ones, capped by its
        declared max_tokens (PRISM never knows the true length)."""
        return self.lengths.expected_total(0, max(1, int(info.max_tokens)))

    def _key(self, info: RequestInfo, out: float) -> tuple:
        o = self.cfg.order
        if o == "edf":
            k = info.arrival + info.slo_ttft
        elif o == "lifo":
            k = -info.arrival
        else:
            k = info.prompt_tokens + 0.25 * out
        return (info.priority, k)

    def on_output(self, req_id: object, output_tokens: int) -> None:
        r = self._reqs.get(req_id)
        self.lengths.observe(output_tokens, r.info.max_tokens if r is not None else None)

    def place(self, req: RequestInfo, idx: int, now: float) -> None:
        """Account for `req` sent to engine `idx` by someone else (shadow mode: PRISM predicts
        and learns next to another router's choices, as bench_learning_error does)."""
        self._engine(idx)
        out = self._expected_output(req)
        self._bind(_Req(req, self._key(req, out), out), idx, now)

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int | None:
        n = len(engines)
        if len(self._eng) < n:
            self._engine(n - 1)
            self._sync(engines)
        cfg = self.cfg
        out = self._expected_output(req)
        r = _Req(req, self._key(req, out), out)
        P = r.prompt
        PP = P * P * 0.5
        hits = None
        if cfg.prefix_aware and req.prefix_hashes:
            hits = r.hits = self._hits(req, n)
        rctx = r.ctx
        slack_t = now + cfg.slack
        qlim_p = now + cfg.queue_limit
        qlim_s = now + cfg.self_paced_queue
        cap = req.slo_tpot * cfg.tpot_margin * (1.0 - cfg.min_share)
        kvcap = cfg.kv_cap
        self._tpot_ref += (req.slo_tpot - self._tpot_ref) * 0.01
        best = wait_best = -1
        best_t = best_room = wait_t = INF
        eng = self._eng
        jitter = cfg.jitter
        hold_pace = cfg.hold_for_pace
        rnd = self._rng.random
        # The hot loop: a handful of float operations per engine (>= 5,000 decisions/s at 64).
        for i in range(n):
            e = eng[i]
            if P >= e.kv_tokens or not engines[i].healthy:
                continue
            base = e.base + e.c2 + e.c3 * rctx
            if hits is None or not hits[i]:
                w = e.c0 * P + e.c1 * PP
            else:
                h = hits[i]
                w = e.c0 * (P - h) + e.c1 * (P - h) * (h + (P - h) * 0.5)
            t = (w / e.pi if e.n + e.rn and base > e.c4 else w) + base
            paced = e.paced
            U = e.U
            V = e.V
            u = U - now
            if u > 0:
                t += u
            if jitter:
                t += rnd() * jitter
            qlim = qlim_p if paced else qlim_s
            if e.n + e.rn == 0 or (
                (e.kv_used if e.kv_seen < 0 else e.kv_seen * e.kv_tokens + e.kv_new) + rctx
                <= kvcap * e.kv_tokens
                and (not hold_pace or ((not paced or V <= slack_t) and U <= qlim and base <= cap))
            ):
                # headroom: how far below its limits the engine stays (larger is better)
                room = (slack_t - V) if paced else (now - U)
                if t < best_t - 1e-3 or (t <= best_t + 1e-3 and room > best_room):
                    best, best_t, best_room = i, t, room
            else:
                # when it would have room (one that is TPOT-full waits for decodes to finish)
                d = V - slack_t if paced else 0.0
                if U - qlim > d:
                    d = U - qlim
                t += (d if d > 0 else 0.0) + (0.0 if base <= cap else cfg.slack)
                if t < wait_t:
                    wait_best, wait_t = i, t
        if best < 0 and wait_best < 0:
            if not any(v.healthy for v in engines):
                raise NoEngineAvailable("no healthy engine")
            raise SloUnattainable(
                f"a request of {P} prompt tokens fits no engine's KV cache", cfg.retry_after
            )
        if cfg.shed:
            t = best_t if best >= 0 else wait_t + self._held_wait(r)
            if now + t * cfg.ttft_margin > r.deadline:
                self.shed += 1
                raise SloUnattainable(
                    f"predicted TTFT {t:.2f}s exceeds the {req.slo_ttft:.2f}s SLO on every engine",
                    max(cfg.retry_after, t - req.slo_ttft),
                )
        if best >= 0 and not (
            hits is not None
            and self.holds
            and wait_best >= 0
            and wait_t < best_t
            and hits[wait_best] - hits[best] >= 0.25 * P
        ):
            self._bind(r, best, now)
            return best
        # (an engine without room now that holds much more of its prefix would still serve it
        # sooner: it waits at the router for that engine, which _waits_for_home keeps it for)
        if not self.holds:
            self._bind(r, wait_best, now)
            return wait_best
        self._hold(r)
        return None

    def _hits(self, info: RequestInfo, n: int) -> list[int]:
        """Predicted cached prompt tokens per engine: the prefix of the prompt's blocks PRISM
        sent there and the index still holds, in whole blocks, leaving the last token to
        compute (as vLLM does)."""
        m = self._prefix.match(info.prefix_hashes, n)
        cap = (max(1, int(info.prompt_tokens)) - 1) // BLOCK_TOKENS
        return [(k if k < cap else cap) * BLOCK_TOKENS for k in m]

    def _held_wait(self, r: _Req) -> float:
        """Rough wait behind the held requests that come first: their work over the cluster's."""
        work = 0.0
        for key, _, h in self._held:
            if key > r.key:
                break
            work += h.prompt
        if work == 0.0:
            return 0.0
        return work / sum(1.0 / max(e.c0, 1e-9) for e in self._eng)

    def _hold(self, r: _Req) -> None:
        self._seq += 1
        bisect.insort(self._held, (r.key, self._seq, r))
        self._reqs[r.info.id] = r

    def _bind(self, r: _Req, idx: int, now: float) -> None:
        e = self._eng[idx]
        base = e.base + e.c2 + e.c3 * r.ctx
        hit = r.hit(idx)
        work = e.prefill_time(r.prompt, base, hit)
        if self.cfg.prefix_aware and r.info.prefix_hashes:
            self._prefix.add(idx, r.info.prefix_hashes)
        r.engine = idx
        r.bound = now
        paced = self._router_paced(e)
        u = e.U if e.U > now else now
        if paced or u + work <= r.deadline:
            r.work = work
            e.U = u + work
            if not paced:
                e.du += work
        else:
            # An engine that orders its queue by TTFT slack (LENS) serves this request, which
            # cannot meet its TTFT there, only from spare time: it delays no one else's TTFT.
            r.work = 0.0
        if paced:
            # pacing counts prefill compute; the decodes' own time is what the share protects
            share = self._share(e, base, r.info.slo_tpot * self.cfg.tpot_margin)
            r.pace = e.prefill_work(r.prompt, hit) / share
            e.V = (e.V if e.V > now else now) + r.pace
            e.dv += r.pace
        else:
            r.pace = 0.0
        e.add(r)
        self._reqs[r.info.id] = r

    def pull(self, idx: int, engines: Sequence[EngineView], now: float) -> list[RequestInfo]:
        if not self._held and not self._hopeless:
            return []
        e = self._engine(idx)
        out: list[RequestInfo] = []
        held = self._held
        margin = self.cfg.ttft_margin
        while self._hopeless:
            # Late requests past their age limit leave in arrival order, each to the engine that
            # would serve it soonest, pacing or not (as the router would without PRISM): pacing
            # them would drain a backlog of them slower than vLLM's own batching does.
            k = self._oldest_aged(e, now)
            if k < 0:
                break
            r = self._hopeless[k][2]
            if self._ttft(e, r, now) > self._best_any(r, engines, now) + 1e-3:
                break  # another engine serves the oldest sooner: it takes it when asked
            del self._hopeless[k]
            self._bind(r, idx, now)
            out.append(r.info)
        if out:
            return out
        while held:
            pick = -1
            j = seen = 0
            while j < len(held) and seen < self.cfg.scan:
                r = held[j][2]
                if r.hits is not None:  # what the engines hold has changed since it came
                    r.hits = self._hits(r.info, len(self._eng))
                if now + self._best_prefill(r) * margin > r.deadline:
                    # cannot meet its TTFT on any engine any more: serve it only from spare room
                    r.hopeless = True
                    del held[j]
                    self._hopeless.append((r.key, r.prompt, r))
                    continue
                seen += 1
                if (
                    self._room(e, r, now)
                    and now + self._ttft(e, r, now) * margin <= r.deadline
                    and not self._waits_for_home(r, idx, now)
                ):
                    pick = j
                    break
                j += 1
            if pick < 0:
                break
            r = held.pop(pick)[2]
            self._bind(r, idx, now)
            out.append(r.info)
        if out:
            return out
        idle = e.n + e.rn == 0
        if self._hopeless and (idle or (e.V <= now and not held)):
            # spare room, and nothing that can still make its SLO is waiting for this engine;
            # an idle engine always takes one, whatever its pacing clock says (else a late list
            # could wait for good once nothing else happens)
            k = self._pick_hopeless(e)
            if k >= 0:
                r = self._hopeless.pop(k)[2]
                self._bind(r, idx, now)
                out.append(r.info)
        elif held and e.n + e.rn == 0 and e.U <= now:
            # an idle engine takes the head of the queue even if the model calls it too slow:
            # the model may be wrong, and nothing may wait forever
            r = held.pop(0)[2]
            self._bind(r, idx, now)
            out.append(r.info)
        return out

    def _waits_for_home(self, r: _Req, idx: int, now: float) -> bool:
        """Whether held r should rather wait for the engine holding much more of its prefix:
        sent here it would recompute that prefix (work every other request then waits behind),
        and its home is predicted to still serve it within its TTFT SLO, with `slack` to spare."""
        h = r.hits
        if h is None or not self.cfg.prefix_aware:
            return False
        home = max(range(len(h)), key=h.__getitem__)
        if home == idx or h[home] - (h[idx] if idx < len(h) else 0) < 0.25 * r.prompt:
            return False
        eh = self._eng[home]
        return now + self._ttft(eh, r, now) * self.cfg.ttft_margin + self.cfg.slack <= r.deadline

    def _best_any(self, r: _Req, engines: Sequence[EngineView], now: float) -> float:
        """Lowest predicted TTFT of r on any healthy engine that can hold it, room or not."""
        best = INF
        for i, e in enumerate(self._eng[: len(engines)]):
            if engines[i].healthy and r.prompt < e.kv_tokens:
                t = self._ttft(e, r, now)
                if t < best:
                    best = t
        return best

    def _oldest_aged(self, e: _Engine, now: float) -> int:
        """The oldest late request past its age limit that this engine can hold, or -1."""
        lim = self.cfg.age_limit
        best, best_t = -1, INF
        for k, (_, p, r) in enumerate(self._hopeless[:64]):
            a = r.info.arrival
            if a < best_t and now - a > lim * r.info.slo_ttft and p < e.kv_tokens:
                best, best_t = k, a
        return best

    def _pick_hopeless(self, e: _Engine) -> int:
        """The smallest late request this engine can hold (among the oldest few)."""
        best, best_p = -1, 1 << 62
        for k, (_, p, _) in enumerate(self._hopeless[:64]):
            if p < e.kv_tokens and p < best_p:
                best, best_p = k, p
        return best

    def _best_prefill(self, r: _Req) -> float:
        """Fastest prefill of r on any engine, ignoring queues (a lower bound on its TTFT)."""
        best = INF
        for e in self._eng:
            if r.prompt < e.kv_tokens:
                t = e.prefill_time(r.prompt, e.base + e.c2 + e.c3 * r.ctx, r.hit(e.idx))
                if t < best:
                    best = t
        return best

    def cancel(self, req_id: object) -> bool:
        r = self._reqs.get(req_id)
        if r is None or r.engine >= 0:
            return False
        for lst in (self._held, self._hopeless):
            for k, item in enumerate(lst):
                if item[2] is r:
                    del lst[k]
                    del self._reqs[req_id]
                    return True
        return False

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        r = self._reqs.pop(req_id, None)
        if r is not None and r.engine >= 0:
            self._eng[r.engine].drop(r)

    # ---- re-binding and resync --------------------------------------------------------------
    def _sync(self, engines: Sequence[EngineView]) -> None:
        """Read the engines' KV size where they export it (vllm:cache_config_info)."""
        for i, v in enumerate(engines):
            e = self._engine(i)
            if e.kv_tokens == INF:
                cap = kv_capacity_tokens(v)
                if cap:
                    e.kv_tokens = float(cap)
                    # the engine caches at most its KV blocks' worth of prompt blocks
                    if i not in self._kv_fed:
                        self._prefix.set_capacity(i, cap // BLOCK_TOKENS)

    @staticmethod
    def _queued(e: _Engine, v: EngineView) -> int:
        """How many of the newest requests sent to e have not started: those its last scrape
        counted as waiting (vLLM admits in arrival order) plus every one sent since that scrape."""
        ts = v.last_scrape
        n = int(v.num_waiting or 0)
        for r in reversed(e.flights.values()):
            if r.bound <= ts:
                break
            n += 1
        return n

    def _backlog_until(self, e: _Engine, v: EngineView) -> float | None:
        """When e will have prefilled what PRISM believes is queued there, from what it sent:
        the predicted work of the requests its last scrape counted as waiting, from the scrape
        on, then each request sent since, from when it was sent. None before a first scrape."""
        ts = v.last_scrape
        if ts is None or ts == -INF:
            return None
        k = int(v.num_waiting or 0)
        later: list[_Req] = []
        u = ts
        for r in reversed(e.flights.values()):
            if r.bound > ts:
                later.append(r)
            elif k > 0:
                u += r.work
                k -= 1
            else:
                break
        for r in reversed(later):
            u = (u if u > r.bound else r.bound) + r.work
        return u

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
            waiting = self._queued(es, v)
            if waiting == 0 or es.U - now <= gain:
                continue
            # the newest `waiting` requests sent here have not started (vLLM admits FCFS)
            for r in list(islice(reversed(es.flights.values()), waiting)):
                if r.moves >= self.cfg.max_moves or r.hopeless:
                    continue
                here = es.U - now  # at the tail of the queue, it starts after everything ahead
                dst, t = self._best_other(r, src, engines, now)
                if dst < 0 or here - t < gain:
                    break  # the older ones are further ahead: they would gain less
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
        self, r: _Req, src: int, engines: Sequence[EngineView], now: float
    ) -> tuple[int, float]:
        best, best_t = -1, INF
        for i, e in enumerate(self._eng[: len(engines)]):
            if i == src or not engines[i].healthy or not self._room(e, r, now):
                continue
            t = self._ttft(e, r, now)
            if t < best_t:
                best, best_t = i, t
        return best, best_t

    def _sync_clocks(self, engines: Sequence[EngineView], now: float) -> None:
        """Pull U back to the backlog an engine reports, where it reports one."""
        for i, v in enumerate(engines):
            if i >= len(self._eng):
                break
            e = self._eng[i]
            kv = v.kv_usage
            if kv is not None and e.kv_tokens < INF:
                e.kv_seen = float(kv)
                e.kv_new = 0.0
            if not self._router_paced(e):
                if e.shared:
                    continue  # the replicas' shared clock holds every replica's backlog
                # An engine that orders its queue by TTFT slack serves late requests last: the
                # work ahead of a new request is that of the waiting ones still on time (the
                # newest ones PRISM sent there that have not started).
                work = 0.0
                for r in islice(reversed(e.flights.values()), self._queued(e, v)):
                    if r.deadline > now:
                        work += r.work
                e.U = now + work
                continue
            if e.U <= now:
                continue
            q = getattr(v, "queued_prefill_tokens", None)  # exact: the oracle view only
            if q is not None:
                tokens = q()
                if tokens <= 0 and v.num_waiting == 0:
                    e.U = now
                else:
                    e.U = now + e.prefill_time(tokens, e.base)
                continue
            u = self._backlog_until(e, v)
            if u is not None:
                e.U = u if u > now else now

    # ---- several router replicas (the transport is PrismShare, router/prism_share.py) ---------
    def take_deltas(self) -> list[tuple[float, float, int, float, int]]:
        """Per engine: (pacing and backlog time this replica added since the last call, its
        requests in flight there, their contexts, steps learned from); resets the additions.

        Backlog of an engine PRISM paces is not shared: that engine reports its queue itself."""
        out = []
        for e in self._eng:
            out.append((e.dv, e.du, e.n, e.ctx, e.steps))
            e.dv = e.du = 0.0
        return out

    def set_shared(
        self, idx: int, v_ahead: float, u_ahead: float, n: int, ctx: float, now: float
    ) -> None:
        """The replicas' shared view of engine `idx`: where the shared pacing clock and backlog
        stand (seconds ahead of `now`, every replica's additions included) and the other
        replicas' requests in flight there."""
        e = self._engine(idx)
        e.V = now + max(0.0, v_ahead)
        if not e.paced:
            e.U = now + max(0.0, u_ahead)
        e.rn = max(0, int(n))
        e.rctx = max(0.0, float(ctx))
        e.shared = True
        e._rebase()

    # ---- introspection ------------------------------------------------------------------------
    @property
    def held(self) -> int:
        return len(self._held) + len(self._hopeless)

    def engine_state(self, idx: int) -> dict:
        e = self._engine(idx)
        return {
            "coef": [e.c0, e.c1, e.c2, e.c3, e.c4],
            "inflight": e.n,
            "decode_step": e.base,
            "prefill_share": e.pi,
            "backlog_itl": e.bl_w / e.bl_n if e.bl_n else None,
            "self_paced": not self._router_paced(e),
            "busy_until": e.U,
            "pace_clock": e.V,
            "steps_seen": e.steps,
        }
