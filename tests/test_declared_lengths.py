"""Requests declare, engines discover: no router policy or planner sees a request's true output
length; the engine learns it when the request ends; lengths are estimated online."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nexussched.engine_sched import LensPolicy, make_engine_policy
from nexussched.eval.information import Information
from nexussched.eval.live import replay_live
from nexussched.eval.metrics import summarize
from nexussched.eval.replay import SimSetup, simulate
from nexussched.perfmodel import LengthEstimator
from nexussched.router.compose import create_app
from nexussched.router.config import RouterSettings, backend_from_url
from nexussched.router.policies import LeastLoad, Prism, RequestInfo, make_policy
from nexussched.router.policy_dispatch import PolicyDispatcher
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.sim.engine import EngineConfig
from nexussched.sim.request import declare, parse_max_tokens
from nexussched.traces import Trace, TraceRequest

MODEL = "sim-llama-3-8b"


def _trace(n: int = 200, rate: float = 20.0, seed: int = 5, long_every: int = 0) -> Trace:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for i in range(n):
        t += rng.expovariate(rate)
        out = int(rng.lognormvariate(4.0, 0.9)) + 1
        if long_every and i % long_every == 0:
            out = 6000  # longer than the default cap
        reqs.append(TraceRequest(i, t, 100 + (i * 37) % 900, out))
    return Trace("lengths", reqs)


# ---- the estimator ---------------------------------------------------------------------------
def test_estimator_conditions_on_tokens_generated_and_on_the_cap():
    est = LengthEstimator(min_samples=5)
    assert est.expected_total(0, 4096) == 4096  # nothing seen: the cap is all it knows
    for x in [10] * 50 + [100] * 50 + [1000] * 50:
        est.observe(x)
    assert est.expected_total(0, 4096) == pytest.approx(370.0)
    # a request past 10 tokens is one of the 100s or 1000s
    assert est.expected_total(10, 4096) == pytest.approx(550.0)
    assert est.expected_total(100, 4096) == pytest.approx(1000.0)
    # outputs are cut at the cap: the 1000s count as 200 under max_tokens=200
    assert est.expected_total(10, 200) == pytest.approx(150.0)
    # longer than anything seen: as long again as it has run, within the cap
    assert est.expected_total(1500, 4096) == pytest.approx(3000.0)
    assert est.expected_total(3000, 4096) == pytest.approx(4096.0)
    assert est.expected_remaining(100, 4096) == pytest.approx(900.0)
    assert est.expected_total(4095, 4096) == 4096  # one token left


def test_estimator_believes_clients_that_declare_their_lengths():
    tight = LengthEstimator()
    loose = LengthEstimator()
    for x in (10, 100, 1000) * 30:
        tight.observe(x, x)  # every request ran to its max_tokens (finish reason "length")
        loose.observe(x, 4096)  # every one stopped by itself, far below its max_tokens
    assert tight.hit_share == 1.0 and loose.hit_share == 0.0
    assert tight.expected_total(0, 300) == pytest.approx(300.0)
    assert loose.expected_total(0, 300) == pytest.approx((10 + 100 + 300) / 3)
    mixed = LengthEstimator()
    for x in (10, 100) * 30:
        mixed.observe(x, 4096)
    for _ in range(60):
        mixed.observe(500, 500)  # half the requests run to their cap
    # past 50 tokens: the 100s (a quarter of all) against the cap-runners (half)
    assert mixed.expected_total(50, 500) == pytest.approx((0.5 * 500 + 0.25 * 100) / 0.75)


def test_estimator_window_forgets_old_lengths():
    est = LengthEstimator(window=64, min_samples=5)
    for _ in range(64):
        est.observe(1000)
    for _ in range(64):
        est.observe(10)
    assert est.expected_total(0, 4096) == pytest.approx(10.0)


def test_max_tokens_modes():
    assert parse_max_tokens("exact") is None and parse_max_tokens("cap:512") == 512
    for bad in ("cap:0", "cap:x", "4096", "cap"):
        with pytest.raises(ValueError, match="--max-tokens"):
            parse_max_tokens(bad)
    assert declare(300, None) == (300, 300)
    assert declare(300, 4096) == (300, 4096)
    assert declare(5000, 4096) == (4096, 4096)  # cut at the cap, as vLLM stops at max_tokens


# ---- the simulator ---------------------------------------------------------------------------
class Spy(LeastLoad):
    """Least load that records the max_tokens of every request it places and learns of."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: dict[object, int] = {}
        self.lengths: dict[object, int] = {}

    def route(self, req: RequestInfo, engines, now):
        self.declared[req.id] = req.max_tokens
        return super().route(req, engines, now)

    def on_output(self, req_id, output_tokens):
        self.lengths[req_id] = output_tokens


class PlannerSpy(LensPolicy):
    seen: set[int] = set()

    def plan(self, state):
        for s in (*state.decodes, *state.prefills):
            PlannerSpy.seen.add(s.max_tokens)
        return super().plan(state)


@pytest.mark.parametrize("mode", ["cap:4096", "exact"])
def test_policies_and_planners_see_only_the_declared_max_tokens(mode):
    trace = _trace(long_every=25)
    PlannerSpy.seen = set()
    spy = Spy()
    sim = ClusterSim(
        parse_cluster("a100:2"),
        spy,
        lambda i, name: PlannerSpy(engine_name=name),
        max_tokens=mode,
    )
    res = sim.run(trace, 2.0, 0.1)
    true = {r.id: r.output_tokens for r in trace.requests}
    cut = {k: min(v, 4096) for k, v in true.items()}
    done = {r.id: r.generated for r in res.requests}
    if mode == "exact":
        assert spy.declared == true
        assert done == true
        assert PlannerSpy.seen == set(true.values())
    else:
        assert set(spy.declared.values()) == {4096}
        assert PlannerSpy.seen == {4096}
        assert done == cut  # the engine discovered each length; long ones were cut at the cap
    # the router learns each length only when the request ends
    assert spy.lengths == done


def test_engines_and_prism_learn_lengths_as_requests_end():
    trace = _trace(300, rate=10.0)
    prism = Prism()
    sim = ClusterSim(
        parse_cluster("a100:2"),
        prism,
        lambda i, name: make_engine_policy("lens", engine_name=name),
    )
    sim.run(trace, 2.0, 0.1)
    assert prism.lengths.observed == 300
    assert sum(e.policy.lengths.observed for e in sim.engines) == 300
    mean = sum(r.output_tokens for r in trace.requests) / 300
    got = prism.lengths.expected_total(0, 4096)
    assert 0.8 * mean < got < 1.25 * mean  # far from the declared 4096


def test_admission_rule_prompt_plus_max_tokens_within_max_model_len():
    trace = Trace("t", [TraceRequest(0, 0.0, 1000, 10), TraceRequest(1, 0.1, 100, 10)])
    cfg = EngineConfig(max_model_len=4500)
    for mode, rejected in (("cap:4096", 1), ("exact", 0)):
        sim = ClusterSim(
            parse_cluster("a100:1"), make_policy("round_robin"), engine_config=cfg, max_tokens=mode
        )
        res = sim.run(trace, 2.0, 0.1)
        # 1000 + 4096 > 4500: vLLM refuses it although its true output would have fit
        assert res.rejected == rejected
        assert sum(1 for r in res.requests if r.generated == r.output) == 2 - rejected


def test_results_record_view_and_max_tokens_mode():
    trace = _trace(60)
    for info in (Information(), Information("oracle", max_tokens="exact")):
        s = simulate(trace, SimSetup(parse_cluster("a100:1"), info=info), "round_robin").summary
        assert s["view"] == info.view and s["max_tokens_mode"] == info.max_tokens
        assert s["completed"] == 60
    with pytest.raises(ValueError, match="--max-tokens"):
        Information(max_tokens="cap:-1")
    with pytest.raises(ValueError, match="--view"):
        Information(view="psychic")


def test_summary_counts_cut_outputs():
    trace = _trace(50, long_every=10)
    out = simulate(trace, SimSetup(parse_cluster("a100:2")), "least_load").outcomes
    assert max(o.output_tokens for o in out) == 4096  # the 6000-token outputs, cut at the cap
    assert summarize(out)["completed"] == 50


# ---- the live side ---------------------------------------------------------------------------
async def test_the_live_router_learns_lengths_from_what_it_relays(stack):
    """PRISM in the live router: each answer's length reaches on_output once it has been relayed
    (streamed or not), never before; the declared max_tokens is all it had until then."""
    e, _ = stack
    policy = Prism(late_binding=False)
    seen: list[int] = []
    started: list[object] = []
    learn = policy.on_output
    policy.on_output = lambda rid, n: (seen.append(n), learn(rid, n))  # type: ignore[method-assign]
    policy.on_first_token = lambda rid, idx, now: started.append(rid)  # type: ignore[method-assign]
    settings = RouterSettings(backends=[backend_from_url(e.url)], health_interval=0.1)
    server = TestServer(create_app(settings, PolicyDispatcher(policy)))
    await server.start_server()
    try:
        router = server.app["router"]
        for _ in range(200):
            if router.backends[0].healthy:
                break
            await asyncio.sleep(0.05)
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            for k, stream in ((7, False), (9, True), (11, True)):
                body = {
                    "model": MODEL,
                    "prompt": [1000 + k] * 30,
                    "max_tokens": 4096,
                    "stream": stream,
                    "vllm_xargs": {"nexussched_output_tokens": k},
                }
                async with s.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()
        assert seen == [7, 9, 11]
        assert len(started) == 3  # each answer's first bytes were seen before its end
        assert policy.lengths.expected_total(0, 4096) == pytest.approx(9.0)
    finally:
        await server.close()


@pytest.fixture(scope="module")
def stack(spawn_module):
    e = spawn_module("engine-sim", "--time-scale", "0.2", wait=False)
    router = spawn_module("router", "--backend", e.url, "--health-interval", "0.2", wait=False)
    e.wait_ready()
    router.wait_ready()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(router.url + "/backends", timeout=5) as r:
            if json.loads(r.read())["backends"][0]["healthy"]:
                break
        time.sleep(0.05)
    return e, router


async def test_live_engines_produce_the_trace_length_while_the_router_sees_the_cap(stack):
    e, router = stack
    reqs = [TraceRequest(i, i * 0.01, 50, 40 + 10 * i) for i in range(4)]
    trace = Trace("live", reqs)
    seen: list[dict] = []

    async def watch() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                async with s.get(router.url + "/backends") as r:
                    b = (await r.json())["backends"][0]
                if b["inflight"]:
                    seen.append(b)
                await asyncio.sleep(0.01)

    w = asyncio.ensure_future(watch())
    outs = await replay_live(router.url, trace, MODEL, 2.0, 0.1, time_scale=1.0)
    w.cancel()
    assert [o.output_tokens for o in outs] == [r.output_tokens for r in reqs]
    # while they ran, the router counted each as declaring 4096 tokens, not its true length
    assert seen
    assert all(b["inflight_max_tokens"] == 4096 * b["inflight"] for b in seen)
    # a declared cap below the true length cuts the output there
    short = await replay_live(e.url, trace, MODEL, 2.0, 0.1, time_scale=0, max_tokens="cap:45")
    assert [o.output_tokens for o in short] == [40, 45, 45, 45]


def test_engine_sim_rejects_a_bad_output_length_field(stack):
    e, _ = stack
    body = {
        "model": MODEL,
        "prompt": "hi",
        "max_tokens": 10,
        "vllm_xargs": {"nexussched_output_tokens": -3},
    }
    req = urllib.request.Request(
        e.url + "/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as ex:
        urllib.request.urlopen(req, timeout=5)
    assert ex.value.code == 400
    assert "nexussched_output_tokens" in json.loads(ex.value.read())["error"]["message"]
