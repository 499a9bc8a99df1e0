"""FastDeploy's scheduler modes in the simulator, and the pure decisions they share with the live
router (steal choice, resource check, blurred least-load choice)."""

from __future__ import annotations

import math
import random

import pytest

from nexussched.eval.metrics import outcomes_from_sim, summarize
from nexussched.plane.keys import shard_of
from nexussched.router.policies import POLICIES, make_policy
from nexussched.router.policies.fastdeploy import (
    Resources,
    SmoothWeighted,
    admit_count,
    blur_select,
    choose_victim,
    decode_blur_step,
    lookup_shards,
    mini_batches,
    node_shard,
    parse_weights,
    prefill_blur_step,
    steal_candidates,
)
from nexussched.router.policies.fastdeploy_splitwise import split_roles
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest


def _trace(n: int, rate: float, prompt: int = 600, output: int = 60, seed: int = 1) -> Trace:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for i in range(n):
        t += rng.expovariate(rate)
        reqs.append(
            TraceRequest(
                i,
                t,
                rng.randint(prompt // 2, prompt * 3 // 2),
                rng.randint(output // 2, output * 3 // 2),
            )
        )
    return Trace("synthetic", reqs)


def _run(policy, cluster: str, trace: Trace, **kw):
    sim = ClusterSim(parse_cluster(cluster), policy, seed=0, **kw)
    res = sim.run(trace, slo_ttft=2.0, slo_tpot=0.1)
    return sim, res, summarize(outcomes_from_sim(res.requests))


# ---- pure decisions ---------------------------------------------------------------------------
def test_mini_batches_and_admission():
    assert mini_batches(3) == [2, 1] and mini_batches(1) == [1] and mini_batches(0) == []
    res = Resources(available_blocks=100, block_size=16, max_num_batched_tokens=1000, batch=3)
    # blocks: ceil(p/16) + 2 reserve each
    assert admit_count([160, 160, 160], res) == 3  # 12 blocks each, 480 tokens
    assert admit_count([700, 700], res) == 1  # tokens over budget after the first
    big = Resources(available_blocks=1000, block_size=16, max_num_batched_tokens=1000, batch=3)
    assert admit_count([5000, 10], big) == 1  # the first goes past the budget (chunked prefill)
    assert admit_count([1600], res) == 0  # 102 blocks > 100
    assert admit_count([16] * 5, res) == 3  # capped by the batch


def test_shard_function_is_the_planes():
    for name in ("a", "node-1", "http://127.0.0.1:8001", "ünïcode"):
        for shards in (1, 3, 8):
            assert node_shard(name, shards) == shard_of(name, shards)
    assert lookup_shards(7, 8) == [7, 0, 1, 2, 3]
    assert lookup_shards(0, 2) == [0, 1]


def test_steal_choice_never_picks_self_and_is_random_among_heavy():
    rng = random.Random(0)
    picks = set()
    for _ in range(200):
        c = steal_candidates(["me", "a", "b", "c"], "me", rng)
        assert "me" not in c
        picks.add(choose_victim(c, rng))
    assert picks == {"a", "b", "c"}
    assert choose_victim(steal_candidates([], "me", rng), rng) is None


def test_blur_select():
    rng = random.Random(0)
    loads = [("p0", 1000), ("p1", 1050), ("p2", 5000)]
    got = {blur_select(loads, 100, rng) for _ in range(100)}
    assert got == {"p0", "p1"}
    assert {blur_select(loads, 10, rng) for _ in range(50)} == {"p0"}
    assert prefill_blur_step(100) == 100 and prefill_blur_step(900) == 450
    assert prefill_blur_step(3000) == 300 and prefill_blur_step(20000) == 500
    assert decode_blur_step(4) == 4 and decode_blur_step(40) == 10


def test_smooth_weighted_front():
    f = SmoothWeighted(parse_weights("3,1", 2))
    seq = [f.next() for _ in range(8)]
    assert seq.count(0) == 6 and seq.count(1) == 2 and seq[:4].count(0) == 3
    f = SmoothWeighted([1, 1, 1])
    assert [f.next([0, 2]) for _ in range(4)] == [0, 2, 0, 2]
    with pytest.raises(ValueError):
        parse_weights("a,b", 2)


def test_bad_parameters_are_rejected():
    for name, kw in [
        ("local", {"ttl": -1}),
        ("local", {"max_size": 0}),
        ("global", {"min_load_score": 0}),
        ("global", {"load_shards_num": 0}),
        ("splitwise", {"sync_period": 0}),
    ]:
        with pytest.raises(ValueError):
            make_policy(name, **kw)
    assert {"local", "global", "splitwise"} <= set(POLICIES)
    with pytest.raises(ValueError):
        split_roles(1)
    with pytest.raises(ValueError):
        split_roles(2, roles="P,P")
    assert split_roles(4) == ["prefill", "prefill", "decode", "decode"]
    assert split_roles(3, roles="p,d,d") == ["prefill", "decode", "decode"]


# ---- modes in the cluster simulator -------------------------------------------------------------
def test_local_rejects_over_max_size_and_expires_by_ttl():
    trace = _trace(300, rate=60.0, prompt=2000, output=200)
    pol = make_policy("local", max_size=8)
    _, res, s = _run(pol, "l4:2", trace)
    assert pol.rejected > 0 and res.rejected == pol.rejected
    assert s["completed"] + res.rejected == 300
    pol = make_policy("local", ttl=1.0)
    _, res, s = _run(pol, "l4:2", trace)
    assert pol.expired > 0 and s["completed"] + pol.expired == 300
    # no request waited in a router queue past its TTL
    for r in res.requests:
        if not math.isnan(r.finish):
            assert r.dispatch_time - r.arrival <= 1.0 + 1e-9


def test_global_steals_from_a_skewed_node_and_serves_each_request_once():
    trace = _trace(400, rate=30.0)
    local = make_policy("local", front_weights="1,0,0,0")  # the front sends everything to node 0
    _, _, s_local = _run(local, "a100:4", trace)
    glob = make_policy("global", front_weights="1,0,0,0")
    sim, res, s_glob = _run(glob, "a100:4", trace)
    assert s_glob["completed"] == 400 and res.rejected == 0
    assert glob.steals > 0
    served = [e.name for e in sim.engines if any(r.engine_name == e.name for r in res.requests)]
    assert len(served) == 4  # idle nodes took work
    assert len({r.id for r in res.requests}) == 400
    assert s_glob["ttft_p99"] < s_local["ttft_p99"]
    # steals only ever take from a node holding >= min_load_score queued requests
    strict = make_policy("global", front_weights="1,0,0,0", min_load_score=10_000)
    _, _, s_strict = _run(strict, "a100:4", trace)
    assert strict.steals == 0
    assert s_strict["ttft_p99"] == pytest.approx(s_local["ttft_p99"])


def test_global_beats_round_robin_on_a_heterogeneous_cluster():
    trace = _trace(1500, rate=9.0, prompt=1000, output=200)
    _, _, rr = _run(make_policy("round_robin"), "a100:2,l4:2", trace)
    glob = make_policy("global")
    _, _, gl = _run(glob, "a100:2,l4:2", trace)
    assert glob.steals > 0
    assert gl["ttft_p99"] < rr["ttft_p99"]
    assert gl["slo_attainment"] > rr["slo_attainment"]


def test_splitwise_prefills_then_decodes_elsewhere_after_the_kv_transfer():
    trace = _trace(200, rate=4.0, prompt=2000, output=50)
    trace.requests[0].output_tokens = 1  # a one-token request ends on its prefill node
    pol = make_policy("splitwise", prefill_nodes=1)
    sim, res, s = _run(pol, "a100:3", trace, kv_link_gbs=1.0)
    assert s["completed"] == 200
    prefill, decoders = sim.engines[0].name, {e.name for e in sim.engines[1:]}
    assert res.requests[0].engine_name == prefill
    assert all(r.engine_name in decoders for r in res.requests[1:])
    assert pol.handoffs == 199
    kvb = sim.engines[0].profile.model.kv_bytes_per_token
    for r in res.requests[1:]:
        transfer = r.prompt * kvb / 1e9
        # the first decode token comes after the prefill token plus the KV transfer
        assert r.first_token <= r.dispatch_time - transfer + 1e-9
        assert r.generated == r.output
    # a slower link delays decoding but not the first token
    _, _, fast = _run(make_policy("splitwise", prefill_nodes=1), "a100:3", trace, kv_link_gbs=100.0)
    assert fast["ttft_p50"] == pytest.approx(s["ttft_p50"], rel=0.05)
    assert fast["tpot_p50"] < s["tpot_p50"]
