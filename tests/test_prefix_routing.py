"""Prefix-aware routing: the router-side index, llm-d's prefix scorer, SGLang's cache-aware
policy, PRISM's predicted hit, and the oracle placement."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from nexussched.localproc import free_ports
from nexussched.router.policies import RequestInfo, make_policy
from nexussched.router.policies.prefix_index import PrefixIndex
from nexussched.sim import ClusterSim, EngineConfig, get_profile
from nexussched.traces import synthetic_from_spec

MODEL = "sim-llama-3-8b"


class View:
    """A minimal live-contract engine view."""

    def __init__(self, name: str, waiting: int = 0, inflight: int = 0, kv: float = 0.0):
        self.name = name
        self.healthy = True
        self.num_running = 0
        self.num_waiting = waiting
        self.kv_usage = kv
        self.last_scrape = 0.0
        self.block_size = 16
        self.num_gpu_blocks = 28000
        self.inflight = inflight
        self.inflight_prompt_tokens = 0
        self.inflight_max_tokens = 0


def info(i: int, hashes: tuple[int, ...], prompt: int | None = None) -> RequestInfo:
    p = prompt if prompt is not None else 16 * len(hashes) + 5
    return RequestInfo(i, p, 100, 0.0, 2.0, 0.1, prefix_hashes=hashes)


# ---- the index -------------------------------------------------------------------------------
def test_index_matches_contiguous_prefixes_and_forgets_least_recently_sent():
    ix = PrefixIndex(None)
    ix.add(0, [1, 2, 3])
    ix.add(1, [1, 9])
    assert ix.match([1, 2, 3, 4], 3) == [3, 1, 0]
    assert ix.match([1, 9, 3], 2) == [1, 2]
    ix.set_capacity(0, 4)
    ix.add(0, [5, 6])  # 1 and 2 are the oldest: trimmed
    assert ix.size(0) == 4 and ix.match([1, 2, 3], 2) == [0, 1]
    ix.removed(1, [9])  # a KV event
    assert ix.match([1, 9], 2) == [0, 1]


# ---- llm-d ------------------------------------------------------------------------------------
def test_llmd_prefix_scorer_keeps_a_prefix_on_its_engine_at_llmd_weights():
    pol = make_policy("llmd_weighted")
    assert (pol.prefix_weight, pol.queue_weight, pol.kv_weight) == (3.0, 2.0, 2.0)
    views = [View("a"), View("b"), View("c")]
    first = pol.route(info(0, (1, 2, 3, 4)), views, 0.0)
    # equal load: the engine that got the prefix gets its continuation
    assert pol.route(info(1, (1, 2, 3, 4, 5, 6)), views, 0.0) == first
    # but a queue on that engine outweighs a half match (3 * 0.5 < 2 * 1 queue score)
    views[first].num_waiting = 10
    assert pol.route(info(2, (1, 2, 9, 9)), views, 0.0) != first
    # the index is sized from vllm:cache_config_info (autoTune)
    assert pol.index.capacity(first) == 28000


# ---- SGLang -----------------------------------------------------------------------------------
def test_sglang_cache_aware_thresholds():
    pol = make_policy("sglang_cache_aware")
    assert (pol.cache_threshold, pol.balance_abs, pol.balance_rel) == (0.3, 64, 1.5)
    views = [View("a"), View("b")]
    home = pol.route(info(0, tuple(range(10))), views, 0.0)
    other = 1 - home
    # a match above 30% of the prompt goes home
    assert pol.route(info(1, tuple(range(10)) + (77,)), views, 1.0) == home
    # a match below 30% goes to the smallest tree (the other worker's is empty)
    assert pol.route(info(2, (0, 50, 51, 52, 53, 54, 55, 56)), views, 2.0) == other
    # imbalance by more than 64 and 1.5x: the least-loaded worker, cache or not
    views[home].inflight, views[other].inflight = 200, 100
    assert pol.route(info(3, tuple(range(10))), views, 3.0) == other
    # 64 apart but not 1.5x: still balanced, so the cache decides
    views[home].inflight, views[other].inflight = 200, 140
    # (both trees now hold blocks 0-9; only home holds the continuation 77)
    assert pol.route(info(4, tuple(range(10)) + (77, 78)), views, 4.0) == home


# ---- PRISM ------------------------------------------------------------------------------------
def test_prism_predicts_the_hit_and_prefers_the_engine_holding_the_prefix():
    pol = make_policy("prism")
    views = [View("a"), View("b")]
    h = tuple(range(200))  # 3,200 cached tokens
    first = pol.route(info(0, h, prompt=3300), views, 0.0)
    pol.on_finish(0, first, 1.0)
    cold = 1 - first
    req = info(1, h + (999,), prompt=3300)
    # the router-side index predicts a 3,200-token hit where the prefix went: less prefill
    t_home = pol.predict(req, first, 2.0)[0]
    t_cold = pol.predict(req, cold, 2.0)[0]
    assert t_home < t_cold
    assert pol.route(req, views, 2.0) == first
    off = make_policy("prism", prefix_aware=False)
    assert off.uses_prefix is False and pol.uses_prefix is True


def test_prism_sends_a_request_home_to_its_prefix_while_that_still_meets_its_slo():
    views = [View("a"), View("b")]
    h = tuple(range(200))  # 3,200 tokens
    picks = {}
    for aff in (True, False):
        pol = make_policy("prism", prefix_affinity=aff)
        home = pol.route(info(0, h, prompt=3300), views, 0.0)  # still prefilling there
        req = info(1, h + (999,), prompt=3300)
        t_home, t_cold = (pol.predict(req, i, 0.0)[0] for i in (home, 1 - home))
        assert t_cold < t_home < 2.0 - 0.5  # the idle engine is sooner; home meets the SLO
        picks[aff] = pol.route(req, views, 0.0) == home
    assert picks == {True: True, False: False}


def test_prism_kv_need_leaves_out_prompt_blocks_requests_in_flight_there_hold():
    pol = make_policy("prism")
    views = [View("a"), View("b")]
    sys_prompt = tuple(range(100))  # a 1,600-token shared prefix
    first = pol.route(info(0, sys_prompt + (500,), prompt=1630), views, 0.0)
    e = pol._eng[first]
    before = e.kv_used
    # a second request sharing the prefix, sent there while the first is in flight: its KV is
    # its context less the 1,600 tokens the first one's blocks hold
    second = info(1, sys_prompt + (600,), prompt=1630)
    pol.place(second, first, 0.1)
    r2 = pol._reqs[1]
    assert r2.kv == pytest.approx(r2.ctx - 1600)
    assert e.kv_used - before == pytest.approx(r2.kv)
    # once both finished, a hit on the cached (now unreferenced) prefix takes new blocks again:
    # vLLM counts unreferenced cached blocks as free until a request holds them
    pol.on_finish(0, first, 1.0)
    pol.on_finish(1, first, 1.0)
    assert e.kv_used == 0.0 and not e.live
    pol.place(info(2, sys_prompt + (700,), prompt=1630), first, 2.0)
    r3 = pol._reqs[2]
    assert r3.hit(first) == 1600 and r3.kv == pytest.approx(r3.ctx)


# ---- the oracle and hit rates in the simulator -----------------------------------------------
def _hit_rate(policy: str, view: str = "live") -> float:
    tr = synthetic_from_spec("synthetic:sessions,n=400,seed=4,rate=8")
    sim = ClusterSim(
        [get_profile("a100")] * 4,
        make_policy(policy),
        engine_config=EngineConfig(),
        view=view,
    )
    res = sim.run(tr, 2.0, 0.1)
    q = sum(e.prefix_cache_queries for e in res.engines)
    return sum(e.prefix_cache_hits for e in res.engines) / q


def test_prefix_aware_routers_reuse_more_than_blind_ones_and_the_oracle_runs_only_as_oracle():
    blind = _hit_rate("round_robin")
    for name in ("llmd_weighted", "sglang_cache_aware", "prism"):
        assert _hit_rate(name) > blind + 0.1, name
    assert _hit_rate("prefix_oracle", view="oracle") > blind + 0.1
    with pytest.raises(ValueError, match="--view oracle"):
        _hit_rate("prefix_oracle")


# ---- live: router and engine-sims hash the same prompt blocks --------------------------------
def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


@pytest.mark.parametrize("policy", ["llmd_weighted", "sglang_cache_aware"])
def test_live_router_sends_a_conversation_back_to_its_cache(spawn, policy):
    *ports, rport = free_ports(4)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    engines = [spawn("engine-sim", "--time-scale", "0", port=p, wait=False) for p in ports]
    router = spawn(
        "router",
        *sum((["--backend", u] for u in urls), []),
        "--policy",
        policy,
        "--scrape-interval",
        "0.2",
        port=rport,
        wait=False,
    )
    for p in (*engines, router):
        p.wait_ready()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the router probes the engines into rotation
        with urllib.request.urlopen(router.url + "/backends", timeout=5) as r:
            if sum(b["healthy"] for b in json.loads(r.read())["backends"]) == 2:
                break
        time.sleep(0.05)
    messages = [{"role": "system", "content": "You answer briefly and precisely. " * 30}]
    cached = []
    for turn in range(5):
        messages.append({"role": "user", "content": f"question number {turn} " * 10})
        out = _post(
            router.url + "/v1/chat/completions",
            {"model": MODEL, "messages": messages, "max_tokens": 8, "ignore_eos": True},
        )
        cached.append(out["usage"]["prompt_tokens_details"]["cached_tokens"])
        messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
    # every later turn found the conversation so far in its engine's cache
    assert cached[0] == 0 and all(c >= 16 * 16 for c in cached[1:])
    hits = [_metric(u, "vllm:prefix_cache_hits_total") for u in urls]
    assert sorted(hits)[:2] == [0.0, 0.0]  # one engine served the whole conversation


def test_prism_follows_kv_events_so_evicted_prefixes_are_not_predicted_hits():
    from nexussched.traces import Trace, TraceRequest

    # one small engine (500 blocks): four 3,000-token prompts with distinct content, in turn;
    # the first ones' blocks are evicted by the later ones
    reqs = [TraceRequest(i, 5.0 * i, 3000, 4, prefix_hashes=tuple(100 * k + i for k in range(6)))
            for i in range(4)]  # fmt: skip
    for events in (True, False):
        pol = make_policy("prism", kv_events=events)
        sim = ClusterSim([get_profile("a100")], pol, engine_config=EngineConfig(num_blocks=500))
        sim.run(Trace("t", reqs), 5.0, 0.2)
        eng = sim.engines[0]
        firsts = [info(9, h) for h in (sim_chain(reqs[0]), sim_chain(reqs[3]))]
        real = [eng.cache.match(f.prefix_hashes, 1000)[0] for f in firsts]
        seen = [pol._prefix.match(f.prefix_hashes, 1)[0] for f in firsts]
        assert real[0] == 0 and real[1] > 0  # the first prompt is gone, the last is cached
        if events:
            assert seen == real and pol._kv_fed == {0}  # PRISM's index is the cache
        else:
            assert pol._kv_fed == set()  # its own LRU guess (sized from cache_config_info)


def sim_chain(r) -> tuple[int, ...]:
    from nexussched.sim.prefix_cache import block_chain

    return block_chain(r.prefix_hashes, r.prefix_block, r.prompt_tokens, 16)[
        : r.prompt_tokens // 16
    ]


# ---- what a placement costs the cache --------------------------------------------------------
def _busy_home(pol, views, h, load: int):
    """Engine 0 holds the 3,200-token context `h`; `load` long requests queue there after it."""
    views[1].healthy = False
    assert pol.route(info(0, h, prompt=3300), views, 0.0) == 0
    pol.on_finish(0, 0, 1.0)
    for j in range(1, 1 + load):
        assert pol.route(info(j, (), prompt=4000), views, 1.0) == 0
    views[1].healthy = True


def test_prism_keeps_a_late_turn_with_its_context_unless_elsewhere_is_worth_the_recompute():
    h = tuple(range(200))
    picks = {}
    for cost in (0.0, 10.0):
        pol = make_policy("prism", place_cost=cost, late_binding=False)
        views = [View("a"), View("b")]
        _busy_home(pol, views, h, load=4)
        turn = RequestInfo(9, 3300, 100, 1.0, 2.0, 0.1, prefix_hashes=h + (999,))
        t_home, t_cold = (pol.predict(turn, i, 1.0)[0] for i in (0, 1))
        # home is predicted to miss the TTFT SLO (with 0.5 s slack), the idle engine to meet
        # it, but only by recomputing the 3,200 cached tokens, worth more than home's delay
        e1 = pol._eng[1]
        recompute = e1.prefill_work(3300) - e1.prefill_work(3300, 3200)
        assert t_cold < 2.0 - 0.5 < t_home < t_cold + 10.0 * recompute
        picks[cost] = pol.route(turn, views, 1.0)
    assert picks == {0.0: 1, 10.0: 0}


def test_prism_moves_a_queued_turn_off_its_context_only_for_a_gain_that_pays_the_recompute():
    h = tuple(range(200))
    moved = {}
    for cost in (0.0, 10.0):
        pol = make_policy("prism", move_cost=cost, place_cost=0.0, late_binding=False,
                          rebind_gain=0.1)  # fmt: skip
        views = [View("a"), View("b")]
        _busy_home(pol, views, h, load=3)
        views[1].healthy = False
        assert pol.route(info(9, h + (999,), prompt=3300), views, 1.0) == 0  # the next turn
        views[1].healthy = True
        views[0].num_waiting = 4  # nothing there has started
        moves = pol.tick(views, 1.01)
        moved[cost] = {m.req_id for m in moves}
        assert all(m.src == 0 and m.dst == 1 for m in moves)
    # without the hysteresis the turn, newest in the queue, leaves its context; with it, it
    # stays and the uncached requests queued before it move instead
    assert 9 in moved[0.0]
    assert 9 not in moved[10.0] and moved[10.0]
