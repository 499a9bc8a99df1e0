"""Learning a stock engine from what the router sees: step reconstruction from relayed streams."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from nexussched.perfmodel import PerfModel, StepRecord
from nexussched.router.observed_feed import EngineWatch, count_tokens
from nexussched.router.policies import Prism
from nexussched.router.prism_live import PrismDispatcher
from tests.test_prism_live import MODEL, start_router, wait_healthy


def test_count_tokens_skips_role_usage_and_done():
    tok = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3}}\n\n'
    assert count_tokens(tok) == 1 and count_tokens(tok * 3) == 3
    assert count_tokens(role + tok) == 1
    assert count_tokens(tok + usage + b"data: [DONE]\n\n") == 1
    assert count_tokens(b"") == 0


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
            for w in range(8):
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
        assert m1.predict([(1500, 0)], 4, 4000) > 1.5 * m0.predict([(1500, 0)], 4, 4000)
    finally:
        await server.close()
