"""Prefix caching in the simulated engine behaves like vLLM V1's (hash chains, refcounts, LRU)."""

from __future__ import annotations

import pytest

from nexussched.perfmodel import StepRecord
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, EngineConfig, EngineSim, SimRequest, get_profile
from nexussched.sim.prefix_cache import PrefixCache, block_chain
from nexussched.traces import Trace, TraceRequest, synthetic_from_spec
from nexussched.traces.sessions import SessionMix, sessions_trace
from tests.test_sim_engine import run_engine

BS = 16


def creq(i: int, hashes: tuple[int, ...], prompt: int, output: int = 4, t: float = 0.0):
    r = SimRequest(i, t, prompt, output, 2.0, 0.1)
    r.hashes = hashes
    return r


def chain(ids: list[int], prompt: int) -> tuple[int, ...]:
    return block_chain(ids, 512, prompt, BS)


# ---- the pool ------------------------------------------------------------------------------
def test_pool_evicts_least_recently_freed_unreferenced_blocks_only():
    c = PrefixCache(4)
    c.take(3)  # three blocks handed out, none cached yet
    for h in (1, 2, 3):
        assert c.store(h)
    assert c.num_free == 1 and c.num_cached == 3
    # a request holding 1 and 2 frees them; 3 stays referenced
    assert c.release([1, 2], anon=0) == 2
    assert list(c.lru) == [2, 1]  # freed tail first: the prefix block is evicted last
    assert c.match([1, 2, 3], 10) == (3, 2)
    c.take(2)  # the uncached block first, then the oldest free cached one (2)
    assert 2 not in c.ref and 1 in c.ref and 3 in c.ref
    assert c.match([1, 2, 3], 10) == (1, 1)  # the chain breaks at the evicted block
    with pytest.raises(KeyError):
        c.take(2)  # 3 is referenced: never evicted (the caller must check the free count)


def test_hit_is_capped_so_the_last_prompt_token_is_computed():
    c = PrefixCache(8)
    c.take(2)
    c.store(10)
    c.store(11)
    # a 32-token prompt fully cached still recomputes its last block (vLLM: num_tokens - 1)
    assert c.match([10, 11], (32 - 1) // BS) == (1, 0)


def test_block_chain_maps_mooncake_blocks_onto_engine_blocks():
    a = chain([7, 8, 9], 1500)
    b = chain([7, 8, 5], 1500)
    c = chain([6, 8, 9], 1500)
    assert len(a) == 1500 // BS
    assert a[:64] == b[:64] and a[64] != b[64]  # shared 2 x 512 tokens, then different
    assert not set(a) & set(c)  # a different first block changes every later hash (chained)
    assert len(set(a)) == len(a)


# ---- the engine ----------------------------------------------------------------------------
def test_cached_prefix_skips_prefill_compute_but_is_attended_and_held_in_kv():
    recs: list[StepRecord] = []
    eng = EngineSim(get_profile("a100"), telemetry=recs.append)
    ids = list(range(4))
    first = creq(0, chain(ids, 2000), 2000)
    run_engine(eng, [first])
    assert first.cached == 0
    n0 = len(recs)
    second = creq(1, chain(ids, 2000), 2000)
    run_engine(eng, [second])
    pre = [r for r in recs[n0:] if r.prefill_chunks]
    hit = (2000 - 1) // BS * BS
    assert second.cached == hit
    assert pre[0].cached_tokens == hit
    # only the uncached tail is computed, attending to the cached context before it
    assert pre[0].prefill_chunks == ((2000 - hit, hit),)
    assert second.ttft < first.ttft / 5
    assert eng.prefix_cache_queries == 4000 and eng.prefix_cache_hits == hit
    assert eng.free_blocks == eng.total_blocks  # cached blocks are free (evictable) when idle


def test_a_planner_sees_a_waiting_requests_cached_prefix_as_computed():
    # vLLM's scheduler finds a waiting request's cached prefix before it computes anything, so
    # LENS (in vLLM, the plug-in asks the same lookup) plans only the tail it will compute
    eng = EngineSim(get_profile("a100"))
    ids = list(range(4))
    run_engine(eng, [creq(0, chain(ids, 2000), 2000)])
    eng.enqueue(creq(1, chain(ids, 2000), 2000), 100.0)
    eng.enqueue(creq(2, chain([9], 500), 500), 100.0)  # nothing of it cached
    waiting = {s.id: s for s in eng.step_state(100.0).prefills}
    assert waiting[1].computed == (2000 - 1) // BS * BS and waiting[1].need == 2000 - 1984
    assert waiting[2].computed == 0 and waiting[2].need == 500


def test_sharing_requests_hold_the_common_prefix_once():
    eng = EngineSim(get_profile("a100"), config=EngineConfig(num_blocks=400))
    h = chain([1, 2], 1024)
    a = creq(0, h, 1024, output=50)
    eng.enqueue(a, 0.0)
    end = eng.start_step(0.0)
    eng.finish_step()
    used_one = eng.total_blocks - eng.free_blocks
    b = creq(1, h, 1024, output=50)
    eng.enqueue(b, end)
    eng.start_step(end)
    eng.finish_step()
    used_two = eng.total_blocks - eng.free_blocks
    # b re-uses a's 63 full blocks and needs only its own last block (+ a's decode growth)
    assert b.cached == 63 * BS
    assert used_two - used_one <= 2


def test_eviction_under_memory_pressure_loses_old_prefixes():
    # 200 blocks: a 1600-token prefix (100 blocks) survives one other request, not three
    eng = EngineSim(get_profile("a100"), config=EngineConfig(num_blocks=200))
    keep = chain([1, 2, 3, 4], 1600)
    run_engine(eng, [creq(0, keep, 1600)])
    run_engine(eng, [creq(1, chain([9, 9], 1000), 1000)])
    again = creq(2, keep, 1600)
    run_engine(eng, [again])
    assert again.cached == (1600 - 1) // BS * BS
    for k in range(3):
        run_engine(eng, [creq(10 + k, chain([100 + k, 5], 1500), 1500)])
    late = creq(3, keep, 1600)
    run_engine(eng, [late])
    assert late.cached == 0


def test_disabled_cache_never_hits():
    eng = EngineSim(get_profile("a100"), config=EngineConfig(enable_prefix_caching=False))
    h = chain([1, 2], 1000)
    reqs = [creq(i, h, 1000, t=float(i)) for i in range(3)]
    run_engine(eng, reqs)
    assert all(r.cached == 0 for r in reqs) and eng.prefix_cache_hits == 0


def test_preempted_requests_recover_from_their_own_cached_blocks_and_all_blocks_return():
    eng = EngineSim(get_profile("a100"), config=EngineConfig(num_blocks=60))
    reqs = [creq(i, chain([i, 100 + i], 300), 300, output=200) for i in range(4)]
    done = run_engine(eng, reqs)
    assert len(done) == 4 and eng.preemptions > 0
    assert eng.free_blocks == eng.total_blocks
    assert eng.cache is not None and eng.cache.num_free == eng.free_blocks


# ---- traces and the cluster ----------------------------------------------------------------
def test_sessions_extend_earlier_turns_and_share_system_prompts():
    tr = sessions_trace(SessionMix(n=300, seed=3))
    assert len(tr) == 300
    assert tr.requests == sessions_trace(SessionMix(n=300, seed=3)).requests  # seeded
    assert [r.arrival for r in tr.requests] == sorted(r.arrival for r in tr.requests)
    by_first: dict[int, list[TraceRequest]] = {}
    for r in tr.requests:
        by_first.setdefault(r.prefix_hashes[0], []).append(r)
    assert len(by_first) <= 8  # every session opens with one of the shared system prompts
    # some later turn's prompt starts with an earlier request's prompt and reply
    extends = 0
    for r in tr.requests:
        for q in by_first[r.prefix_hashes[0]]:
            k = len(q.prefix_hashes)
            if q is not r and k < len(r.prefix_hashes) and r.prefix_hashes[:k] == q.prefix_hashes:
                extends += 1
                break
    assert extends > 100
    with pytest.raises(ValueError, match="unknown key"):
        synthetic_from_spec("synthetic:sessions,bogus=1")
    with pytest.raises(ValueError, match="agent"):
        synthetic_from_spec("synthetic:sessions,agent=2")


def _run(trace: Trace, policy: str, caching: bool = True):
    sim = ClusterSim(
        [get_profile("a100")] * 2,
        make_policy(policy),
        engine_config=EngineConfig(enable_prefix_caching=caching),
    )
    return sim.run(trace, 5.0, 0.2)


def test_cluster_serves_session_turns_from_cache_and_faster():
    tr = synthetic_from_spec("synthetic:sessions,n=200,seed=1,rate=4")
    on = _run(tr, "round_robin")
    off = _run(tr, "round_robin", caching=False)
    hits = sum(e.prefix_cache_hits for e in on.engines)
    queries = sum(e.prefix_cache_queries for e in on.engines)
    assert queries == sum(r.prompt_tokens for r in tr.requests)
    assert 0.3 < hits / queries < 0.95
    assert sum(e.prefix_cache_hits for e in off.engines) == 0
    ttft_on = sorted(r.ttft for r in on.requests)[len(tr) // 2]
    ttft_off = sorted(r.ttft for r in off.requests)[len(tr) // 2]
    assert ttft_on < ttft_off
    assert sum(r.cached for r in on.requests) == hits


def test_preempted_requests_of_unnamed_content_recover_from_their_own_blocks_too():
    # A trace without prefix hashes (Azure's): its requests' content is their own, and vLLM (and
    # engine-sim) still cache their blocks, so one preempted re-admits with what was not evicted
    # yet. The simulator recomputed those in full (as with caching off), where engine-sim did
    # not: the sim-to-live gap of round robin's overloaded l4. Now it does as for content the
    # trace names, request by request.
    import dataclasses

    reqs = [TraceRequest(i, 0.05 * i, 400 + 37 * (i % 5), 300) for i in range(12)]
    own = Trace("own", reqs)
    named = Trace("named", [dataclasses.replace(r, prefix_hashes=(1000 + i, 2000 + i))
                            for i, r in enumerate(reqs)])  # fmt: skip

    def prefill(tr: Trace, caching: bool = True) -> tuple[int, int]:
        recs: list[StepRecord] = []
        sim = ClusterSim(
            [get_profile("l4")],
            make_policy("round_robin"),
            engine_config=EngineConfig(num_blocks=400, enable_prefix_caching=caching),
            telemetry=recs.append,
            max_tokens="exact",
        )
        res = sim.run(tr, 5.0, 0.2)
        assert all(r.failure is None for r in res.requests)
        return sum(r.prefill_tokens for r in recs), sum(e.preemptions for e in res.engines)

    (p_own, n_own), (p_named, n_named), (p_off, n_off) = (
        prefill(own), prefill(named), prefill(own, caching=False)
    )  # fmt: skip
    assert n_own == n_named == n_off > 0
    assert p_own == p_named < p_off
