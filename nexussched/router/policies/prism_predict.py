"""PRISM's knowledge and predictions: per engine, a step-time model learned online from the
engine's telemetry and the state PRISM keeps of it (prism_engine.py), resynced with what the
engine reports and shared between router replicas; from them, a request's predicted TTFT and
decode step time on each engine. The routing decisions built on them are in prism.py."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from ...perfmodel.lengths import LengthEstimator
from ...perfmodel.model import PerfModel
from ...perfmodel.telemetry import StepRecord
from .base import EngineView, RequestInfo
from .prefix_index import BLOCK_TOKENS, PrefixIndex
from .prism_config import INF, PrismConfig
from .prism_engine import MIXED_MIN, EngineState, ReqState
from .view import kv_capacity_tokens


class PrismPredictor:
    """What PRISM learns of each engine and predicts from it (the base of the Prism policy)."""

    def __init__(self, config: PrismConfig) -> None:
        self.cfg = config
        self._eng: list[EngineState] = []
        self._reqs: dict[object, ReqState] = {}  # held or in flight, by id
        self._tpot_ref = 0.1  # running mean of requests' TPOT SLO (s)
        # output lengths of finished requests: a request's expected length given its max_tokens
        self.lengths = LengthEstimator()
        self._prefix = PrefixIndex(None)  # prompt blocks sent to each engine (LRU)
        self._kv_fed: set[int] = set()  # engines whose KV events PRISM follows

    # ---- learning (transport-independent: the simulator, engine telemetry, the plane) -----------
    def _engine(self, idx: int) -> EngineState:
        while len(self._eng) <= idx:
            k = len(self._eng)
            self._eng.append(EngineState(PerfModel(self.cfg.perf, name=str(k)), k))
        return self._eng[idx]

    def observe(self, idx: int, rec: StepRecord) -> None:
        """One step record of engine `idx`: refine its model and its observed pace."""
        e = self._eng[idx] if idx < len(self._eng) else self._engine(idx)
        e.steps += 1
        # Decode-only steps outnumber the rest by far (a long decode run is thousands of them):
        # thinning them keeps the prefill terms identifiable in the model's sliding window.
        # A decode step the model mispredicts by more than 15% is always kept, so decode terms
        # stay right where prefill steps dominate what was kept (a slow engine's few long steps).
        # (The batch terms are summed once here, in one pass: features.record_features's and
        # EngineState.seen_step's sums, in the same order, so the same floats.)
        nd = rec.num_decodes
        chunks = rec.prefill_chunks
        if chunks:
            tok = 0
            attn = 0.0
            span = 0
            for c, cx in chunks:
                tok += c
                attn += c * (cx + c / 2.0)
                span += c + cx
            x = (float(tok), attn, float(nd), float(rec.decode_ctx_sum), 1.0)
            e.model.observe_features(x, rec.duration)
        else:
            tok = span = 0
            attn = 0.0
            e.dskip += 1
            if (
                e.dskip >= self.cfg.decode_sample
                or abs(e.c4 + e.c2 * nd + e.c3 * rec.decode_ctx_sum - rec.duration)
                > 0.15 * rec.duration
            ):
                e.dskip = 0
                x = (0.0, 0.0, float(nd), float(rec.decode_ctx_sum), 1.0)
                e.model.observe_features(x, rec.duration)
        if e.model.coef is not e.coef:
            e.refresh()
        e.seen_batch(nd + len(chunks), float(rec.decode_ctx_sum + span))
        if not (nd and tok):
            attn = 0.0  # (as the prefill terms below read it)
        if nd:  # prefill time per step with decodes, over every such step (decode-only: none)
            e.pf += ((e.c0 * tok + e.c1 * attn if tok else 0.0) - e.pf) * 0.02
        if nd and tok:
            a = 0.02 if e.mixed > 50 else 1.0 / (e.mixed + 1)
            work = e.c0 * tok + e.c1 * attn
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

    def seen(self, idx: int, rec: StepRecord) -> None:
        """The newest step of engine `idx`, not learned from (a feed over its learning budget):
        only the batch a new request would join."""
        self._engine(idx).seen_step(rec)

    def observe_segment(self, idx: int, x: tuple[float, ...], duration: float) -> None:
        """Several consecutive steps of engine `idx` seen only together (their summed batch
        features and total time; router/observed_feed.py): the model is linear in the features,
        so it learns from the sum as from one step."""
        e = self._engine(idx)
        e.steps += 1
        e.model.observe_features(x, duration)
        if e.model.coef is not e.coef:
            e.refresh()

    @property
    def follows_kv_events(self) -> bool:
        """Whether kv_event() is used (the live router polls engines' KV events only then)."""
        return self.cfg.prefix_aware and self.cfg.kv_events

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
    def _router_paced(self, e: EngineState) -> bool:
        """Whether PRISM must pace this engine's prefills (its steps do not keep the TPOT pace)."""
        return e.paced

    def _share(self, e: EngineState, base: float, cap: float) -> float:
        """Prefill share of wall time that keeps decodes' step time within `cap`."""
        if e.n + e.rn == 0:
            return 1.0
        return max(self.cfg.min_share, 1.0 - base / cap)

    def _room(self, e: EngineState, r: ReqState, now: float) -> bool:
        """Has the engine room for r now: backlog, pacing, KV, and its decodes' step with r."""
        if r.prompt >= e.kv_tokens:
            return False
        if e.n + e.rn == 0:
            return True  # an idle engine always takes work it can hold
        if e.kv_load() + e.kv_need(r) > self.cfg.kv_cap * e.kv_tokens:
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

    def _ttft(self, e: EngineState, r: ReqState, now: float) -> float:
        wait = e.U - now
        return (wait if wait > 0 else 0.0) + e.prefill_time(
            r.prompt, e.base + e.c2 + e.c3 * r.ctx, r.hit(e.idx)
        )

    def predict(self, req: RequestInfo, idx: int, now: float) -> tuple[float, float]:
        """(predicted TTFT, predicted decode step time) of `req` if sent to engine `idx` now."""
        e = self._engine(idx)
        r = ReqState(req, (), self._expected_output(req))
        if self.cfg.prefix_aware and req.prefix_hashes:
            r.hits = self._hits(req, len(self._eng))
        base = e.base + e.c2 + e.c3 * r.ctx
        # Its decode steps: the batch it joins, plus the prefill work an average step with decodes
        # carried lately (later arrivals' prefills mix into its steps; those queued ahead of it
        # are done before it starts, under vLLM's first-come-first-served admission).
        return self._ttft(e, r, now), base + e.pf

    def _expected_output(self, info: RequestInfo) -> float:
        """Expected output length of a new request: learned from finished ones, capped by its
        declared max_tokens (PRISM never knows the true length)."""
        return self.lengths.expected_new(max(1, int(info.max_tokens)))

    def on_output(self, req_id: object, output_tokens: int) -> None:
        r = self._reqs.get(req_id)
        self.lengths.observe(output_tokens, r.info.max_tokens if r is not None else None)

    def _hits(self, info: RequestInfo, n: int) -> list[int]:
        """Predicted cached prompt tokens per engine: the prefix of the prompt's blocks PRISM
        sent there and the index still holds, in whole blocks, leaving the last token to
        compute (as vLLM does)."""
        cap = (max(1, int(info.prompt_tokens)) - 1) // BLOCK_TOKENS
        return self._prefix.hit_tokens(info.prefix_hashes, n, cap)

    def _best_any(self, r: ReqState, engines: Sequence[EngineView], now: float) -> float:
        """Lowest predicted TTFT of r on any healthy engine that can hold it, room or not."""
        best = INF
        for i, e in enumerate(self._eng[: len(engines)]):
            if engines[i].healthy and r.prompt < e.kv_tokens:
                t = self._ttft(e, r, now)
                if t < best:
                    best = t
        return best

    def _min_prefill(self, r: ReqState) -> float:
        """Fastest prefill of r on any engine were it alone there: its compute (the uncached
        tail) and one step (a lower bound on its TTFT whatever the load). 0 while an engine's
        prefill speed is not yet learned (a cold model's prior proves nothing)."""
        best = INF
        P = r.prompt
        h = r.hits
        for e in self._eng:
            if e.mixed < MIXED_MIN:
                return 0.0
            if P < e.kv_tokens:
                # e.prefill_work(P, r.hit(e.idx)) + e.c4, inlined (every request asks this)
                hit = h[e.idx] if h is not None and e.idx < len(h) else 0
                n = P - hit
                t = e.c0 * n + e.c1 * n * (hit + n * 0.5) + e.c4
                if t < best:
                    best = t
        return best

    def _best_prefill(self, r: ReqState) -> float:
        """Fastest prefill of r on any engine, ignoring queues (a lower bound on its TTFT)."""
        best = INF
        for e in self._eng:
            if r.prompt < e.kv_tokens:
                t = e.prefill_time(r.prompt, e.base + e.c2 + e.c3 * r.ctx, r.hit(e.idx))
                if t < best:
                    best = t
        return best

    # ---- resync with what the engines report -------------------------------------------------
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

    def _sync_clocks(self, engines: Sequence[EngineView], now: float) -> None:
        """Pull U back to the backlog an engine reports, where it reports one."""
        for i, v in enumerate(engines):
            if i >= len(self._eng):
                break
            e = self._eng[i]
            kv = v.kv_usage
            if kv is not None and e.kv_tokens < INF:
                # Only a new scrape resets what was sent since: a tick between scrapes sees the
                # same gauge, which does not yet hold the requests sent after it was read.
                ts = v.last_scrape
                if ts is None:
                    e.kv_seen, e.kv_new = float(kv), 0.0
                elif ts != e.kv_at:
                    e.kv_seen, e.kv_at = float(kv), ts
                    e.kv_new = e.kv_sent_since(ts)
            if not self._router_paced(e):
                if e.shared:
                    continue  # the replicas' shared clock holds every replica's backlog
                # An engine that orders its queue by TTFT slack serves late requests last: the
                # work ahead of a new request is that of the waiting ones still on time (the
                # newest ones PRISM sent there that have not started).
                work = 0.0
                for r in islice(reversed(e.flights.values()), e.queued(v)):
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
            u = e.backlog_until(v)
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
