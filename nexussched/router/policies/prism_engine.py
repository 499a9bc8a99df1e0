"""PRISM's bookkeeping: what it knows of each request it routed (ReqState) and of each engine
(EngineState: the engine's learned step-time model, its observed pace, its two clocks U and V,
and the prediction arithmetic over them)."""

from __future__ import annotations

from collections.abc import Sequence

from ...perfmodel.model import PerfModel
from ...perfmodel.telemetry import StepRecord
from .base import EngineView, RequestInfo
from .prefix_index import BLOCK_TOKENS
from .prism_config import INF

MIXED_MIN = 20  # steps mixing decodes and prefill seen before an engine's pace is trusted


class ReqState:
    """A request PRISM has seen: held at the router or in flight at an engine."""

    __slots__ = ("info", "prompt", "ctx", "deadline", "key", "engine", "moves", "hopeless", "work",
                 "pace", "bound", "hits", "kv", "end", "first")  # fmt: skip

    def __init__(self, info: RequestInfo, key: tuple | None, out: float) -> None:
        self.info = info
        self.prompt = max(1, int(info.prompt_tokens))
        # mean context of its decode steps (`out`: its expected output length): what it adds to
        # every step's KV reads
        self.ctx = self.prompt + out * 0.5
        self.deadline = info.arrival + info.slo_ttft
        self.key = key  # its order at the router while held (None until it is: Prism._keyed)
        self.engine = -1
        self.moves = 0
        self.hopeless = False
        self.work = 0.0  # predicted prefill time at the engine it went to
        self.pace = 0.0  # how far it advanced that engine's pacing clock
        self.bound = -INF  # when it was sent to that engine
        self.hits: list[int] | None = None  # predicted cached prompt tokens per engine
        # KV it adds where it went: its context less the prompt blocks requests still in flight
        # there hold (a hit on those takes no new block; a hit on a cached block no request holds
        # does: vLLM counts such blocks free until a request references them again)
        self.kv = self.ctx
        self.end = -INF  # when it was predicted to have prefilled, where it went (at binding)
        self.first = False  # its first token has come back (the router relayed it)

    def hit(self, idx: int) -> int:
        h = self.hits
        return h[idx] if h is not None and idx < len(h) else 0


class EngineState:
    """PRISM's knowledge of one engine: its learned model, its observed pace, the two clocks."""

    __slots__ = ("model", "coef", "c0", "c1", "c2", "c3", "c4", "n", "ctx", "base", "pw", "pd",
                 "pi", "bl_w", "mixed", "U", "V", "kv_tokens", "kv_used", "flights", "steps",
                 "dskip", "dn", "dctx", "nn", "nctx", "kv_seen", "kv_at", "kv_new", "paced",
                 "bl_n", "backlogged", "rn", "rctx", "dv", "du", "shared", "idx", "pf",
                 "live", "unfirst", "nonneg")  # fmt: skip

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
        self.flights: dict[object, ReqState] = {}  # in dispatch order
        self.unfirst = 0  # of them, those whose first token has not come back
        # prompt blocks (RequestInfo.prefix_hashes) of the requests in flight here: how many
        # of them hold each (they share one cached block)
        self.live: dict[int, int] = {}
        self.steps = 0
        self.dskip = 0
        # decode load: the last step's (telemetry) plus what was sent here since that step
        self.dn = -1  # no telemetry yet: use PRISM's own in-flight count
        self.dctx = 0.0
        self.nn = 0
        self.nctx = 0.0
        # KV: the engine's reported use as of its last scrape (at kv_at) plus what was sent since
        self.kv_seen = -1.0
        self.kv_at: float | None = -INF
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
        # (an NNLS fit's always are: then a predicted TTFT here bounds the prefill alone from
        # above, which lets route() skip PrismPredictor._min_prefill)
        self.nonneg = self.c0 >= 0 and self.c1 >= 0 and self.c2 >= 0 and self.c3 >= 0
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
        chunks = rec.prefill_chunks
        self.seen_batch(
            rec.num_decodes + len(chunks),
            float(rec.decode_ctx_sum + (sum(c + x for c, x in chunks) if chunks else 0)),
        )

    def seen_batch(self, dn: int, dctx: float) -> None:
        """seen_step given its sums: dn sequences, dctx tokens of context among them."""
        self.dn = dn
        self.dctx = dctx
        self.nn = 0
        self.nctx = 0.0
        self._rebase()

    def kv_sent_since(self, ts: float) -> float:
        """KV tokens of the requests in flight here that were sent after `ts` (a scrape that
        could not count them yet)."""
        kv = 0.0
        for r in reversed(self.flights.values()):
            if r.bound <= ts:
                break
            kv += r.kv
        return kv

    def kv_load(self) -> float:
        """Predicted KV tokens in use: reported use plus what was sent since, else own count."""
        if self.kv_seen < 0:
            return self.kv_used
        return self.kv_seen * self.kv_tokens + self.kv_new

    def shared_tokens(self, hashes: Sequence[int], hit: int) -> int:
        """Of a prompt's first `hit` tokens (a predicted cache hit here, whole blocks), how many
        lie in blocks a request in flight here holds. Chained hashes make that a prefix (a
        request holding block k holds blocks 0..k-1 too), so a bisection finds its end."""
        live = self.live
        lo, hi = 0, min(len(hashes), hit // BLOCK_TOKENS)
        if not live or hi == 0 or hashes[0] not in live:
            return 0
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in live:
                lo = mid
            else:
                hi = mid - 1
        return lo * BLOCK_TOKENS

    def kv_need(self, r: ReqState) -> float:
        """KV tokens r would add here: its context less what in-flight requests already hold."""
        h = r.hit(self.idx)
        if h <= 0:
            return r.ctx
        k = self.shared_tokens(r.info.prefix_hashes, h)
        return r.ctx - k if k < r.ctx else 0.0

    def add(self, r: ReqState, kv: float | None = None) -> None:
        """r is sent here; `kv`: kv_need(r), where the caller has it (route() computes it)."""
        if kv is None:  # kv_need(r), inlined
            h = r.hits
            hit = h[self.idx] if h is not None and self.idx < len(h) else 0
            if hit <= 0:
                kv = r.ctx
            else:
                k = self.shared_tokens(r.info.prefix_hashes, hit)
                kv = r.ctx - k if k < r.ctx else 0.0
        r.kv = kv
        info = r.info
        ctx = r.ctx
        self.flights[info.id] = r
        if not r.first:
            self.unfirst += 1
        self.n += 1
        self.ctx += ctx
        self.kv_used += kv
        self.nn += 1
        self.nctx += ctx
        self.kv_new += kv
        if info.prefix_hashes:
            live = self.live
            get = live.get
            for h in info.prefix_hashes:
                live[h] = get(h, 0) + 1
        # _rebase(), inlined (add and drop run for every request)
        if self.dn < 0 or self.paced:
            self.base = self.c4 + self.c2 * (self.n + self.rn) + self.c3 * (self.ctx + self.rctx)
        else:
            self.base = self.c4 + self.c2 * (self.dn + self.nn) + self.c3 * (self.dctx + self.nctx)

    def drop(self, r: ReqState) -> None:
        info = r.info
        if self.flights.pop(info.id, None) is None:
            return
        if not r.first:
            self.unfirst -= 1
        self.n -= 1
        self.ctx -= r.ctx
        self.kv_used -= r.kv
        live = self.live
        if info.prefix_hashes:
            get = live.get
            for h in info.prefix_hashes:
                c = get(h, 0) - 1
                if c > 0:
                    live[h] = c
                else:
                    live.pop(h, None)
        if self.n <= 0:
            self.n, self.ctx, self.kv_used, self.unfirst = 0, 0.0, 0.0, 0
            live.clear()
        if self.dn < 0 or self.paced:  # _rebase(), inlined
            self.base = self.c4 + self.c2 * (self.n + self.rn) + self.c3 * (self.ctx + self.rctx)
        else:
            self.base = self.c4 + self.c2 * (self.dn + self.nn) + self.c3 * (self.dctx + self.nctx)

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

    def queued(self, v: EngineView) -> int:
        """How many of the newest requests sent here have not started: those its last scrape
        counted as waiting (vLLM admits in arrival order) plus every one sent since that scrape."""
        ts = v.last_scrape
        n = int(v.num_waiting or 0)
        for r in reversed(self.flights.values()):
            if r.bound <= ts:
                break
            n += 1
        return n

    def backlog_until(self, v: EngineView) -> float | None:
        """When this engine will have prefilled what PRISM believes is queued there, from what it sent:
        the predicted work of the requests its last scrape counted as waiting, from the scrape
        on, then each request sent since, from when it was sent. None before a first scrape."""
        ts = v.last_scrape
        if ts is None or ts == -INF:
            return None
        k = int(v.num_waiting or 0)
        later: list[ReqState] = []
        work = 0.0
        u = ts
        # requests here with no first token yet, not yet looked at (their prefill time is
        # trusted once the engine's pace is: before, the scrape alone tells)
        left = self.unfirst if self.mixed >= MIXED_MIN else 0
        for r in reversed(self.flights.values()):
            if left <= 0 and k <= 0 and r.bound <= ts:
                break
            if not r.first:
                left -= 1
            if r.bound > ts:
                later.append(r)
            elif k > 0:
                work += r.work
                k -= 1
            elif not r.first:
                # Running, but no first token yet: its prompt is still being prefilled (a long
                # one, in chunks), and vLLM's first-come-first-served scheduling gives the
                # running ones the token budget first. The scrape counts it as running, not
                # waiting, yet what waits starts after it: until its predicted end, or, as it
                # had started by the scrape, its own prefill time after the scrape at most.
                end = r.end if r.end < ts + r.work else ts + r.work
                if end > u:
                    u = end
        u += work
        for r in reversed(later):
            u = (u if u > r.bound else r.bound) + r.work
        return u
