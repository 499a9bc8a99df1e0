"""Learning a stock engine's step time from what the router sees: the streams it relays and the
engine's vLLM /metrics counters.

For engines that publish no step telemetry (stock vLLM, SGLang, any OpenAI-compatible server), the
router still sees, for each engine, every request it sends there (with its prompt length), the
arrival time of every streamed chunk it relays back, and (vLLM) the engine's cumulative counters
at each scrape. From those alone this module rebuilds the engine's steps and feeds them to the
policy's perf model, as the engine's own telemetry would.

From streams ("emission clusters", EngineWatch):
1. A continuous-batching engine emits one token per running sequence per step, all at the end of
   the step, so the chunks of one step reach the router together. Chunks from one engine that
   arrive within `eps` of the first chunk of a cluster (and from requests not yet in it) form one
   *cluster*; a new cluster starts after a gap, or when a request already in the cluster emits
   again. eps adapts: a fifth of the recent inter-cluster gap, clamped to [0.5 ms, 20 ms].
2. The time between two consecutive clusters is the duration of the step that ended at the later
   one, if the engine was busy throughout (some request emitted in both, i.e. kept decoding).
3. That step's batch is read off the cluster: a request that emitted before is a *decode* with
   context prompt + tokens so far; a request emitting its first token finished its *prefill* there.
4. Prefills span steps the router cannot see into (queueing, chunked prefill). So while any sent
   request has not emitted yet, clusters are accumulated into a *segment* rather than emitted as
   steps: from the first cluster after the earliest such request was sent (a step already running
   then cannot contain it; from its send time if the engine was idle) until the cluster in which
   the last of them emits its first token. The segment's features are the sums of its steps'
   (k steps: k intercepts, every step's decodes and contexts, and each finished prompt as one
   prefill chunk at context 0), its duration is the wall time it spans, and since the step-time
   model is linear in its features, a segment is as good an observation as a step for the fit.
   A segment that grows past `max_segment` clusters (a queue that never empties) is dropped.
5. Steps with no prefill are decode-only records (StepRecord), which also update PRISM's view of
   the engine's decode batch; segments go to the model directly (`observe_segment`).
6. Bursts: a busy router (or network) can deliver several steps' chunks together; a request then
   emits again within eps, or one chunk holds several tokens. Those clusters' times are not step
   boundaries: a run of them is taught as one segment from the last clean cluster before it to
   the first clean one after it, and no prefill segment opens or closes on them.
Limits: only streamed requests teach (a non-streamed response gives no step times); tokens the
engine serves from a prefix cache are counted as prefill work; the arrival times include the
network and the engine's detokenising, a roughly constant offset the intercept absorbs.

From vLLM's /metrics (MetricsWatch): between two scrapes of an engine at which requests of this
router were in flight, their count never falling to zero in between, and at which the engine's own
gauges showed requests running or waiting, the engine stepped the whole interval, so its K steps
(the count of `vllm:iteration_tokens_total`) took the interval's wall time. (The router's count
alone is not enough: it counts a request from its send until the last chunk is relayed, so an
engine can sit idle at a scrape with requests in flight not there yet, or done there and still
being relayed; such an interval taught one step as long as the whole interval.) The deltas of the prompt, cached-prompt, generation and first-token counters give those
steps' summed features: prefill P - H tokens, F prompts finished (attention as F prompts of the
mean length), G - F decodes at the mean context of the prompts in flight plus half the mean output
so far. One such interval is one segment. It needs no streaming; idle intervals are skipped.

`learn=auto` (prism_live) uses this only for engines that publish no telemetry; `learn=observed`
uses both sources for every engine, `learn=metrics` the /metrics one only (the comparison in
benchmarks/bench_learning_error.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..perfmodel.telemetry import StepRecord
from . import vllm_metrics as vm

N_FEATURES = 5  # prefill tokens, prefill attention work, decodes, decode context sum, 1


def count_tokens(data: bytes) -> int:
    """Token events in a chunk of an OpenAI-compatible SSE stream (not the chat role opener, the
    usage summary or [DONE])."""
    n = data.count(b"data:")
    if n == 0:
        return 0
    return max(0, n - data.count(b"[DONE]") - data.count(b'"role"') - data.count(b'"choices":[]'))


@dataclass(slots=True)
class _Flight:
    prompt: int
    sent: float
    emitted: int = 0  # tokens seen so far
    last_cluster: int = -1  # index of the cluster it last emitted in


@dataclass(slots=True)
class _Cluster:
    t: float
    index: int
    decodes: int = 0
    ctx: int = 0
    firsts: list[int] = field(default_factory=list)  # prompts finishing their prefill here
    members: set = field(default_factory=set)
    chained: bool = False  # a member also emitted in the previous cluster (engine busy)
    burst: bool = False  # its steps' chunks came together: their boundaries were not seen
    k: int = 1  # steps it covers (a chunk of n tokens: n steps)


class EngineWatch:
    """One engine's flights and clusters; calls `step(rec)` and `segment(x, duration)`."""

    def __init__(
        self,
        step: Callable[[StepRecord], None],
        segment: Callable[[tuple[float, ...], float], None],
        max_segment: int = 256,
    ) -> None:
        self.step = step
        self.segment = segment
        self.max_segment = max_segment
        self.flights: dict[object, _Flight] = {}
        self.pending = 0  # flights that have not emitted yet
        self.decoding = 0  # flights that have
        self.wait_since = 0.0  # send time the segment waits to open after
        self.cur: _Cluster | None = None
        self.last_t: float | None = None  # time of the last closed cluster
        self.n_clusters = 0
        self.gap = 0.02  # EWMA of the inter-cluster gap (s)
        # the open segment: start time (None: none open), summed features, clusters in it
        self.seg_start: float | None = None
        self.seg_x = [0.0] * N_FEATURES
        self.seg_k = 0
        self.seg_dirty = False  # dropped (too long): skip until no request is pending
        self.seg_wait = False  # a request was sent while busy: the segment opens at next cluster
        # a run of decode steps delivered together: its start (None: none) and summed features
        self.run_start: float | None = None
        self.last_burst = False  # the last closed cluster was part of a burst
        self.run_x = [0.0] * N_FEATURES
        self.steps = 0
        self.segments = 0

    # ---- events ----------------------------------------------------------------------------
    def sent(self, rid: object, prompt: int, t: float) -> None:
        self.flights[rid] = _Flight(max(1, int(prompt)), t)
        self.pending += 1
        if self.seg_start is None and not self.seg_wait:
            if self.decoding:
                self.seg_wait = True  # the step running now cannot hold it
                self.wait_since = t
            else:
                self._open(t)

    def chunk(self, rid: object, t: float, tokens: int) -> None:
        f = self.flights.get(rid)
        if f is None or tokens <= 0:
            return
        c = self.cur
        eps = min(0.02, max(0.0005, 0.2 * self.gap))
        if c is None or t - c.t > eps or rid in c.members:
            # a member emitting again within eps: steps delivered together (a busy router or
            # network), so the time between these clusters is not a step's
            burst = c is not None and t - c.t <= eps
            if burst:
                c.burst = True  # it came late too: it holds the burst's first step
            self._close()
            c = self.cur = _Cluster(t, self.n_clusters, burst=burst)
            self.n_clusters += 1
        c.members.add(rid)
        n = tokens
        if f.emitted == 0:
            c.firsts.append(f.prompt)
            self.pending -= 1
            self.decoding += 1
            n -= 1  # the rest of the chunk: decodes after the prefill
        elif f.last_cluster == c.index - 1:
            c.chained = True
        if n:
            ctx0 = f.prompt + max(1, f.emitted)
            c.decodes += n
            c.ctx += n * ctx0 + n * (n - 1) // 2
        if tokens > 1:  # several steps' tokens in one chunk
            c.burst = True
            c.k = max(c.k, tokens)
        f.emitted += tokens
        f.last_cluster = c.index

    def done(self, rid: object, t: float) -> None:
        f = self.flights.pop(rid, None)
        if f is not None and f.emitted:
            self.decoding -= 1
        elif f is not None:
            self.pending -= 1
            if self.pending == 0 and self.seg_start is not None:
                self._drop_segment()  # it failed or left unserved: the segment cannot be read

    # ---- clusters -> steps and segments ------------------------------------------------------
    def _open(self, t: float) -> None:
        self.seg_start = t
        self.seg_x = [0.0] * N_FEATURES
        self.seg_k = 0
        self.seg_wait = False

    def _drop_segment(self) -> None:
        self.seg_start = None
        self.seg_wait = False
        self.seg_dirty = self.pending > 0

    def _close(self) -> None:
        c = self.cur
        if c is None:
            return
        self.cur = None
        prev = self.last_t
        self.last_t = c.t
        late = self.last_burst  # the previous cluster came late: no clean start for a step
        self.last_burst = c.burst
        if prev is not None and c.chained and not c.burst:
            self.gap += (min(c.t - prev, 1.0) - self.gap) * 0.1
        decode = prev is not None and c.chained and c.decodes and not c.firsts
        if not decode or self.seg_start is not None or self.seg_dirty:
            self.run_start = None  # a run of burst steps ends unread
        if self.seg_dirty:
            if self.pending == 0 and not c.firsts:
                self.seg_dirty = False
            elif self.pending == 0:
                self.seg_dirty = False
                return
            else:
                return
        if self.seg_start is not None:
            x = self.seg_x
            x[2] += c.decodes
            x[3] += c.ctx
            x[4] += c.k
            for p in c.firsts:
                x[0] += p
                x[1] += p * p / 2.0
            self.seg_k += c.k
            if self.pending == 0:
                duration = c.t - self.seg_start
                if self.seg_k == 1 and not c.burst:
                    # one step: a full record (it also tells PRISM the engine's decode batch)
                    chunks = tuple((p, 0) for p in c.firsts)
                    self.step(StepRecord(duration, chunks, c.decodes, c.ctx))
                    self.steps += 1
                elif duration > 0 and not c.burst:  # (a burst's end came late: unreadable)
                    self.segment(tuple(x), duration)
                    self.segments += 1
                self.seg_start = None
            elif self.seg_k >= self.max_segment:
                self._drop_segment()
            return
        if self.seg_wait and c.t >= self.wait_since:
            # a prefill we expected to start later finished already, or the segment would open
            # at a cluster that came late (a burst): unreadable
            if c.firsts or c.burst:
                self.seg_wait = False
                self.seg_dirty = self.pending > 0
                return
            self._open(c.t)
            if prev is not None and c.chained and c.decodes and not (c.burst or late):
                self.step(StepRecord(c.t - prev, (), c.decodes, c.ctx))
                self.steps += 1
            return
        if decode:
            assert prev is not None
            self._decode(c, prev, late)

    def _decode(self, c: _Cluster, prev: float, late: bool) -> None:
        """A decode-only cluster of a busy engine: a step record, or part of a run of steps
        delivered together, taught as one segment from the clean boundary before the run to the
        first clean one after it."""
        if self.run_start is None:
            if late:
                return  # it began at a cluster that came late: unreadable
            if not c.burst:
                self.step(StepRecord(c.t - prev, (), c.decodes, c.ctx))
                self.steps += 1
                return
            self.run_start = prev
            self.run_x = [0.0] * N_FEATURES
        x = self.run_x
        x[2] += c.decodes
        x[3] += c.ctx
        x[4] += c.k
        if not c.burst:
            self.segment(tuple(x), c.t - self.run_start)
            self.segments += 1
            self.run_start = None


class MetricsWatch:
    """One engine's /metrics scrapes -> busy-interval samples `segment(x, duration)` (the module
    doc's "From vLLM's /metrics")."""

    def __init__(self, segment: Callable[[tuple[float, ...], float], None]) -> None:
        self.segment = segment
        self.prev: tuple[float, dict[str, float], int, int, float, bool] | None = None
        self.first_sum = 0.0  # requests that got a first token, since the first scrape
        self.gen_sum = 0.0  # tokens they decoded
        self.samples = 0
        self.skipped = 0  # intervals not busy throughout (or with no steps)

    def scraped(
        self,
        t: float,
        totals: dict[str, float],
        inflight: int,
        prompts: int,
        idles: int,
        working: bool = True,
    ) -> None:
        """A scrape at `t`: the engine's TOTALS, and the router's requests in flight there, their
        prompt tokens, how often its in-flight count fell to zero so far, and whether the engine's
        gauges showed requests running or waiting (`working`)."""
        if vm.STEPS not in totals:
            self.prev = None  # not a vLLM V1 engine: nothing to learn from here
            return
        prev = self.prev
        mean_prompt = prompts / inflight if inflight else 0.0
        self.prev = (t, totals, inflight, idles, mean_prompt, working)
        if prev is None:
            return
        t0, c0, inflight0, idles0, mean_prompt0, working0 = prev

        def delta(name: str) -> float:
            return totals.get(name, 0.0) - c0.get(name, 0.0)

        k = delta(vm.STEPS)
        if k < 0 or delta(vm.GENERATION) < 0:
            return  # the engine restarted: its counters began again
        firsts = delta(vm.FIRSTS)
        decodes = max(0.0, delta(vm.GENERATION) - firsts)
        self.first_sum += firsts
        self.gen_sum += decodes
        # Busy throughout: requests of ours were in flight at both scrapes and never all ended
        # in between, and the engine was working at both, so it stepped the whole interval and
        # its k steps took all of it.
        busy = inflight0 > 0 and inflight > 0 and working0 and working and idles == idles0
        if k < 1 or not busy or t <= t0:
            self.skipped += 1
            return
        prompt = delta(vm.PROMPT)
        hits = delta(vm.CACHED) if vm.CACHED in totals else delta(vm.CACHE_HITS)
        hits = min(prompt, max(0.0, hits))
        x = [0.0, 0.0, decodes, 0.0, k]
        if firsts > 0 and prompt > 0:
            # prompts finished in the interval, as `firsts` prompts of the mean length (a cached
            # head of h tokens: the rest attends to it), the attention term p*(h + p/2) each
            p = (prompt - hits) / firsts
            h = hits / firsts
            x[0] = prompt - hits
            x[1] = firsts * p * (h + p / 2.0)
        if decodes:
            # each decode's context: its prompt (those in flight here) and half its output so far
            half_out = 0.5 * self.gen_sum / self.first_sum if self.first_sum else 0.0
            x[3] = decodes * (0.5 * (mean_prompt0 + mean_prompt) + half_out)
        self.segment(tuple(x), t - t0)
        self.samples += 1


class ObservedFeed:
    """The router's watch on stock engines: relayed streams (Router.watch) and /metrics scrapes
    (BackendRegistry.on_scrape) -> the policy's perf models.

    `only(idx)`: whether to learn engine idx this way (learn=auto: engines without telemetry);
    `streams` / `metrics`: which of the two sources to learn from."""

    def __init__(
        self,
        policy,
        n: int,
        only: Callable[[int], bool] | None = None,
        streams: bool = True,
        metrics: bool = True,
    ) -> None:
        self.policy = policy
        self.only = only
        self.streams = streams
        self.metrics = metrics
        self.engines = [self._watch(i) for i in range(n)]
        self.scrapes: list[MetricsWatch] = []

    def _learns(self, idx: int) -> bool:
        return self.only is None or self.only(idx)

    def _segment(self, idx: int) -> Callable[[tuple[float, ...], float], None]:
        p = self.policy

        def segment(x: tuple[float, ...], duration: float) -> None:
            if self._learns(idx):
                p.observe_segment(idx, x, duration)

        return segment

    def _watch(self, idx: int) -> EngineWatch:
        p = self.policy

        def step(rec: StepRecord) -> None:
            if self._learns(idx):
                p.observe(idx, rec)

        return EngineWatch(step, self._segment(idx))

    def _at(self, idx: int) -> EngineWatch:
        while len(self.engines) <= idx:  # a backend added while the router runs
            self.engines.append(self._watch(len(self.engines)))
        return self.engines[idx]

    # Router.watch hooks (called on the request path: constant time each). An engine taught by
    # its own telemetry is not watched at all (its requests are never tracked, so their chunks
    # cost a dict lookup): watching it would cost every relayed chunk for nothing learned.
    def sent(self, idx: int, rid: object, prompt: int, t: float) -> None:
        if self.streams and self._learns(idx):
            self._at(idx).sent(rid, prompt, t)

    def chunk(self, idx: int, rid: object, t: float, data: bytes) -> None:
        if self.streams:
            w = self._at(idx)
            if rid in w.flights:
                w.chunk(rid, t, count_tokens(data))

    def done(self, idx: int, rid: object, t: float) -> None:
        if self.streams:
            self._at(idx).done(rid, t)

    # BackendRegistry.on_scrape hook (once per scrape of a backend with vLLM metrics)
    def scraped(self, idx: int, backend, metrics, t: float) -> None:
        if not self.metrics:
            return
        while len(self.scrapes) <= idx:
            self.scrapes.append(MetricsWatch(self._segment(len(self.scrapes))))
        b = backend
        working = metrics.num_running + metrics.num_waiting > 0
        self.scrapes[idx].scraped(
            t, metrics.totals, b.inflight, b.inflight_prompt_tokens, b.idles, working
        )

    @property
    def observations(self) -> int:
        return sum(w.steps + w.segments for w in self.engines) + sum(
            w.samples for w in self.scrapes
        )
