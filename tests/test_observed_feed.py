"""Learning a stock engine from what the router sees: step reconstruction from relayed streams."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from nexussched.perfmodel import PerfModel, StepRecord
from nexussched.router import vllm_metrics as vm
from nexussched.router.observed_feed import EngineWatch, MetricsWatch, ObservedFeed, count_tokens
from nexussched.router.policies import Prism
from nexussched.router.prism_live import PrismDispatcher
from tests.test_prism_live import MODEL, complete, start_router, wait_healthy


def test_count_tokens_skips_role_usage_and_done():
    tok = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3}}\n\n'
    assert count_tokens(tok) == 1 and count_tokens(tok * 3) == 3
    assert count_tokens(role + tok) == 1
    assert count_tokens(tok + usage + b"data: [DONE]\n\n") == 1
    assert count_tokens(b"") == 0


def test_engines_taught_by_telemetry_are_not_watched():
    # learn=auto: engine 0 publishes telemetry, engine 1 does not; only engine 1's streams are
    # tracked (tracking engine 0's would cost every relayed chunk and teach nothing)
    policy = Prism()
    feed = ObservedFeed(policy, 2, only=lambda idx: idx == 1)
    tok = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    for idx in (0, 1):
        for k in range(4):
            feed.sent(idx, (idx, k), 100, 0.0)
        for t in range(1, 30):
            for k in range(4):
                feed.chunk(idx, (idx, k), t * 0.02 + k * 1e-5, tok)
    assert len(feed.engines[0].flights) == 0 and feed.engines[0].n_clusters == 0
    assert len(feed.engines[1].flights) == 4 and feed.engines[1].n_clusters > 20
    assert feed.engines[1].steps > 0 and policy.model(1).samples > 0
    assert policy.model(0).samples == 0
    for idx in (0, 1):
        for k in range(4):
            feed.done(idx, (idx, k), 1.0)
    assert not feed.engines[1].flights


class _Engine:
    """A toy continuous-batching engine (known linear step time) emitting every running
    request's token at the end of each step, as the router would see it."""

    COEF = (2e-5, 0.0, 1e-4, 2e-8, 0.01)

    def __init__(self, watch: EngineWatch) -> None:
        self.w = watch
        self.t = 0.0
        self.waiting: list[tuple[int, int, int]] = []  # (rid, prompt, out)
        self.running: dict[int, list[int]] = {}  # rid -> [prompt, generated, out]
        self.truth: list[StepRecord] = []

    def send(self, rid: int, prompt: int, out: int) -> None:
        self.w.sent(rid, prompt, self.t)
        self.waiting.append((rid, prompt, out))

    def step(self) -> None:
        chunks = [(p, 0) for _, p, _ in self.waiting[:2]]  # admits two prefills per step
        new = self.waiting[:2]
        del self.waiting[:2]
        nd = len(self.running)
        ctx = sum(p + g for p, g, _ in self.running.values())
        c = self.COEF
        tok = sum(x for x, _ in chunks)
        dur = c[0] * tok + c[2] * nd + c[3] * ctx + c[4]
        self.truth.append(StepRecord(dur, tuple(chunks), nd, ctx))
        self.t += dur
        for rid, p, o in new:
            self.running[rid] = [p, 0, o]
        for rid in list(self.running):
            r = self.running[rid]
            r[1] += 1
            self.w.chunk(rid, self.t + 1e-5 * (rid % 7), 1)  # the chunks of a step arrive together
            if r[1] >= r[2]:
                del self.running[rid]
                self.w.done(rid, self.t)


def test_observed_steps_and_segments_teach_the_true_step_time():
    model = PerfModel()
    recs: list[StepRecord] = []
    segs: list[tuple] = []

    def step(rec):
        recs.append(rec)
        model.observe(rec)

    def segment(x, d):
        segs.append((x, d))
        model.observe_features(x, d)

    w = EngineWatch(step, segment)
    eng = _Engine(w)
    rng = np.random.default_rng(0)
    rid = 0
    for _ in range(3000):
        if rng.random() < 0.15:
            eng.send(rid, int(rng.integers(100, 3000)), int(rng.integers(5, 80)))
            rid += 1
        if eng.running or eng.waiting:
            eng.step()
        else:
            eng.t += 0.05
    w._close()
    assert w.steps > 500 and w.segments > 50
    # every decode-only step it rebuilt is one the engine ran: same decodes, same duration
    # (within the chunks' arrival spread)
    by_nd: dict[int, list[float]] = {}
    for r in eng.truth:
        if not r.prefill_chunks:
            by_nd.setdefault(r.num_decodes, []).append(r.duration)
    rebuilt = [r for r in recs if not r.prefill_chunks]
    assert len(rebuilt) > 500
    ok = sum(
        1
        for r in rebuilt
        if r.num_decodes in by_nd
        and np.min(np.abs(np.array(by_nd[r.num_decodes]) - r.duration)) < 1e-4
    )
    assert ok >= 0.95 * len(rebuilt)
    # the model learned from steps and segments predicts the engine's true step times
    test = eng.truth[-500:]
    pred = np.array(
        [model.predict(r.prefill_chunks, r.num_decodes, r.decode_ctx_sum) for r in test]
    )
    y = np.array([r.duration for r in test])
    assert float(np.mean(np.abs(pred - y) / y)) < 0.1
    assert model.coef[0] > 0.5 * _Engine.COEF[0]  # prefill cost learned, from segments


async def complete_stream(session, url: str, prompt: int, max_tokens: int, seed: int) -> int:
    body = {"model": MODEL, "prompt": [seed] + [1000 + k % 500 for k in range(prompt - 1)],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True}  # fmt: skip
    async with session.post(url + "/v1/completions", json=body) as r:
        await r.read()
        return r.status


async def test_live_router_learns_stock_engines_from_the_streams_it_relays(spawn):
    # learn=observed: no engine telemetry is read; the l4 is learned as the slower engine
    fast = spawn("engine-sim", "--profile", "h100", wait=False)
    slow = spawn("engine-sim", "--profile", "l4", wait=False)
    fast.wait_ready()
    slow.wait_ready()
    policy = Prism(late_binding=False)
    disp = PrismDispatcher(policy, learn="observed")
    server = await start_router([fast.url, slow.url], disp)
    try:
        await wait_healthy(server, 2)
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            # 16 rounds: with 8, each engine gave 7-9 prefill segments and the learned ratio
            # spread 1.6-3.0 (once 1.45 in a whole-suite run); with 16 it was 2.65-3.05 in 5 runs
            for w in range(16):
                codes = await asyncio.gather(
                    *(
                        complete_stream(s, url, 200 + 150 * k, 12, 20000 + 16 * w + k)
                        for k in range(8)
                    )  # fmt: skip
                )
                assert set(codes) == {200}
        assert disp.feed is None and disp.streams is None  # nothing but what it relayed
        obs = disp.observed
        assert obs is not None and all(e.steps + e.segments > 10 for e in obs.engines)
        m0, m1 = policy.model(0), policy.model(1)
        assert m0.fitted and m1.fitted
        # the prior alone gives both engines the same model (ratio 1.0). Learned from relayed
        # streams the l4/h100 ratio was 2.65-3.6 in 9 runs alone, but 1.42-1.45 in 2 of 3
        # whole-suite runs (the h100's model inflated). A likely cause, fixed since: /metrics
        # intervals at whose scrapes the engine was idle while the router still counted requests
        # in flight were taught as steps as long as the interval (see the test below). Not
        # reproduced before the fix (2.78-3.49 in 9 runs: alone at load 5-9, beside a 6M-object
        # heap or a GIL-hogging thread, after the 22 files before this one); 3.22-3.83 in 3 runs
        # after. The bar asks for a clear separation from the prior, not the truth's ratio
        p0, p1 = m0.predict([(1500, 0)], 4, 4000), m1.predict([(1500, 0)], 4, 4000)
        print(f"RATIO streams l4/h100 {p1 / p0:.2f} (h100 {p0 * 1e3:.1f} ms, l4 {p1 * 1e3:.1f} ms)"
              f" steps/segments {[(e.steps, e.segments) for e in obs.engines]}"
              f" metrics samples {[w.samples for w in obs.scrapes]}")  # fmt: skip
        assert p1 > 1.25 * p0
    finally:
        await server.close()


class _Bursty(_Engine):
    """The toy engine seen through a busy router: from time to time the chunks of several steps
    reach it together (a late event loop), a few microseconds apart, each stream's end after
    its last chunk."""

    def __init__(self, watch: EngineWatch, rng: np.random.Generator) -> None:
        super().__init__(watch)
        self.watch = watch
        self.rng = rng
        self.held: list[tuple] = []  # (rid, tokens) chunks and (rid,) ends not delivered yet
        self.w = _Holding(watch.sent, self.held)

    def step(self) -> None:
        super().step()
        if self.rng.random() < 0.3 and len(self.truth) % 5:
            return  # held: delivered with a later step's
        for j, ev in enumerate(self.held):
            if len(ev) == 2:
                self.watch.chunk(ev[0], self.t + 2e-6 * j, ev[1])
            else:
                self.watch.done(ev[0], self.t + 2e-6 * j)
        self.held.clear()


class _Holding:
    def __init__(self, sent, held: list) -> None:
        self.sent = sent
        self.held = held

    def chunk(self, rid, t, tokens) -> None:
        self.held.append((rid, tokens))

    def done(self, rid, t) -> None:
        self.held.append((rid,))


def test_steps_delivered_together_are_not_read_as_short_steps():
    model = PerfModel()
    recs: list[StepRecord] = []

    def step(rec):
        recs.append(rec)
        model.observe(rec)

    w = EngineWatch(step, lambda x, d: model.observe_features(x, d))
    rng = np.random.default_rng(2)
    eng = _Bursty(w, rng)
    rid = 0
    for _ in range(3000):
        if rng.random() < 0.15:
            eng.send(rid, int(rng.integers(100, 3000)), int(rng.integers(5, 80)))
            rid += 1
        if eng.running or eng.waiting:
            eng.step()
        else:
            eng.t += 0.05
    w._close()
    shortest = min(r.duration for r in eng.truth)
    assert w.segments > 100 and len(recs) > 300
    assert all(r.duration > 0.5 * shortest for r in recs)  # no step read off a burst
    test = eng.truth[-500:]
    pred = np.array(
        [model.predict(r.prefill_chunks, r.num_decodes, r.decode_ctx_sum) for r in test]
    )
    y = np.array([r.duration for r in test])
    assert float(np.mean(np.abs(pred - y) / y)) < 0.1


class _Counted(_Engine):
    """The toy engine with vLLM V1's cumulative /metrics counters, scraped by a MetricsWatch
    every `period` seconds with the router's in-flight count (what it sent and saw end)."""

    def __init__(self, mw: MetricsWatch, period: float = 0.5) -> None:
        super().__init__(EngineWatch(lambda r: None, lambda x, d: None))
        self.mw = mw
        self.period = period
        self.next_scrape = period
        self.c = dict.fromkeys((vm.STEPS, vm.PROMPT, vm.GENERATION, vm.FIRSTS), 0.0)
        self.prompts: dict[int, int] = {}  # in flight: rid -> prompt
        self.idles = 0

    def send(self, rid: int, prompt: int, out: int) -> None:
        super().send(rid, prompt, out)
        self.prompts[rid] = prompt

    def step(self) -> None:
        new = self.waiting[:2]
        decodes = len(self.running)
        super().step()
        c = self.c
        c[vm.STEPS] += 1
        c[vm.FIRSTS] += len(new)  # the toy engine finishes a prompt in the step admitting it
        c[vm.PROMPT] += sum(p for _, p, _ in new)
        c[vm.GENERATION] += len(new) + decodes
        for rid in [r for r in self.prompts if r not in self.running and r not in new_ids(self)]:
            del self.prompts[rid]
        if not self.prompts:
            self.idles += 1
        self.tick()

    def tick(self) -> None:
        while self.t >= self.next_scrape:
            n = len(self.prompts)
            self.mw.scraped(self.next_scrape, dict(self.c), n, sum(self.prompts.values()),
                            self.idles)  # fmt: skip
            self.next_scrape += self.period


def new_ids(eng: _Engine) -> set[int]:
    return {rid for rid, _, _ in eng.waiting}


def test_metrics_busy_intervals_teach_the_true_step_time():
    model = PerfModel()
    segs: list[tuple] = []

    def segment(x, d):
        segs.append((x, d))
        model.observe_features(x, d)

    mw = MetricsWatch(segment)
    eng = _Counted(mw)
    rng = np.random.default_rng(1)
    rid = 0
    for _ in range(6000):
        if rng.random() < 0.06:
            eng.send(rid, int(rng.integers(100, 3000)), int(rng.integers(5, 80)))
            rid += 1
        if eng.running or eng.waiting:
            eng.step()
        else:
            eng.t += 0.05
            eng.tick()
    assert mw.samples > 50 and mw.skipped > 0  # idle spells are not taught
    steps = sum(x[4] for x, _ in segs)
    assert 500 < steps < len(eng.truth)
    # the model learned from the counters alone predicts the engine's true step times, far better
    # than the prior does
    test = eng.truth[-1000:]
    y = np.array([r.duration for r in test])

    def err(m: PerfModel) -> float:
        pred = np.array(
            [m.predict(r.prefill_chunks, r.num_decodes, r.decode_ctx_sum) for r in test]
        )
        return float(np.mean(np.abs(pred - y) / y))

    print(f"metrics-learned MAPE {err(model):.3f}, prior {err(PerfModel()):.3f}")
    assert err(model) < 0.15 and err(model) < 0.5 * err(PerfModel())


async def test_live_router_learns_stock_engines_from_their_metrics_alone(spawn):
    # learn=metrics: requests are not streamed, so the router sees no step at all; it learns
    # each engine from the deltas of its /metrics counters between scrapes while busy
    fast = spawn("engine-sim", "--profile", "h100", wait=False)
    slow = spawn("engine-sim", "--profile", "l4", wait=False)
    fast.wait_ready()
    slow.wait_ready()
    policy = Prism(late_binding=False)
    disp = PrismDispatcher(policy, learn="metrics")
    server = await start_router([fast.url, slow.url], disp)
    try:
        await wait_healthy(server, 2)
        assert server.app["router"].watch is None  # no stream is watched
        url = str(server.make_url("")).rstrip("/")
        obs = disp.observed
        assert obs is not None
        async with aiohttp.ClientSession() as s:
            # rounds until both engines were busy over enough scrape intervals for a fit (the
            # fast one takes a round in fewer of them), at most 20
            for _ in range(20):
                codes = await asyncio.gather(
                    *(complete(s, url, 200 + 150 * k, 64) for k in range(10))
                )
                assert set(codes) == {200}
                if len(obs.scrapes) == 2 and min(w.samples for w in obs.scrapes) >= 30:
                    break
        assert disp.feed is None and disp.streams is None
        assert all(e.steps + e.segments == 0 for e in obs.engines)
        samples = [w.samples for w in obs.scrapes]
        print(f"/metrics samples per engine {samples}")
        assert all(n >= 24 for n in samples), samples  # enough for a fit (min_samples)
        m0, m1 = policy.model(0), policy.model(1)
        assert m0.fitted and m1.fitted
        # the prior alone gives both engines the same model (ratio 1.0). Learned from relayed
        # streams the l4/h100 ratio was 2.65-3.6 in 9 runs alone, but 1.42-1.45 in 2 of 3
        # whole-suite runs (the h100's observed steps inflated; cause not found): the bar asks
        # for a clear separation from the prior, not the truth's ratio
        assert m1.predict([(1500, 0)], 4, 4000) > 1.25 * m0.predict([(1500, 0)], 4, 4000)
        assert m1.predict((), 8, 8 * 600) > 1.5 * m0.predict((), 8, 8 * 600)
    finally:
        await server.close()


def test_vllm_totals_are_parsed_and_summed_over_engines():
    text = """\
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:iteration_tokens_total_count{engine="0",model_name="m"} 40.0
vllm:iteration_tokens_total_count{engine="1",model_name="m"} 2.0
vllm:iteration_tokens_total_sum{engine="0",model_name="m"} 900.0
vllm:iteration_tokens_total_created{engine="0",model_name="m"} 1.7e+09
vllm:prompt_tokens_total{engine="0",model_name="m"} 800.0
vllm:prompt_tokens_cached_total{engine="0",model_name="m"} 64.0
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 1.5
"""
    m = vm.parse_vllm_metrics(text)
    assert m is not None
    assert m.totals == {
        vm.STEPS: 42.0,
        vm.STEP_TOKENS: 900.0,
        vm.PROMPT: 800.0,
        vm.CACHED: 64.0,
        vm.GENERATION: 100.0,
        vm.FIRSTS: 4.0,
        vm.ITL_SUM: 1.5,
    }


def test_metrics_watch_reads_one_busy_interval_and_skips_the_rest():
    got: list[tuple] = []
    mw = MetricsWatch(lambda x, d: got.append((x, d)))
    c0 = {vm.STEPS: 10.0, vm.PROMPT: 0.0, vm.GENERATION: 0.0, vm.FIRSTS: 0.0}
    mw.scraped(1.0, c0, 2, 1000, 5)
    c1 = {vm.STEPS: 30.0, vm.PROMPT: 1000.0, vm.CACHED: 200.0, vm.GENERATION: 40.0, vm.FIRSTS: 2.0}
    mw.scraped(1.5, c1, 2, 1000, 5)  # busy throughout: one sample
    assert len(got) == 1
    x, d = got[0]
    assert d == 0.5 and x[4] == 20 and x[0] == 800 and x[2] == 38
    assert x[1] == 2 * 400 * (100 + 200)  # two prompts of 500, 100 cached each
    c2 = dict(c1, **{vm.STEPS: 50.0, vm.GENERATION: 80.0})
    mw.scraped(2.0, c2, 1, 500, 6)  # all its requests ended in between: the engine may have idled
    c3 = dict(c2, **{vm.STEPS: 60.0})
    mw.scraped(2.5, c3, 0, 0, 6)  # nothing in flight now
    c4 = dict(c3, **{vm.STEPS: 5.0})
    mw.scraped(3.0, c4, 3, 900, 6)  # counters went back: a restarted engine
    assert len(got) == 1 and mw.skipped == 2
    mw.scraped(3.5, {vm.RUNNING: 1.0}, 3, 900, 6)  # no vLLM V1 step counts: nothing to learn
    assert mw.prev is None


def test_metrics_interval_is_taught_only_if_the_engine_worked_at_both_scrapes():
    # The router counts a request in flight from its send to the last chunk relayed, so on a
    # slow router an engine can be idle at a scrape with requests "in flight" (not arrived yet,
    # or done and still being relayed). Such an interval was taught as one step as long as the
    # interval (seen in the streams test above, router's scrapes every 0.1 s: an h100 interval
    # idle at its start taught a 108 ms step where its steps took 9-26 ms); the engine's gauges
    # say it was idle.
    got: list[tuple[tuple[float, ...], float]] = []
    mw = MetricsWatch(lambda x, d: got.append((x, d)))

    def totals(steps: float) -> dict[str, float]:
        return {vm.STEPS: steps, vm.PROMPT: 0.0, vm.GENERATION: 4 * steps, vm.FIRSTS: 0.0}

    mw.scraped(0.0, totals(0), 4, 400, 0, working=False)  # idle there, requests on their way
    mw.scraped(0.1, totals(1), 4, 400, 0, working=True)
    assert got == [] and mw.skipped == 1
    mw.scraped(0.2, totals(11), 4, 400, 0, working=True)  # busy at both ends: 10 steps
    assert len(got) == 1 and got[0][0][4] == 10 and abs(got[0][1] - 0.1) < 1e-9
    mw.scraped(0.3, totals(12), 4, 400, 0, working=False)  # done there, still being relayed
    assert len(got) == 1 and mw.skipped == 2
