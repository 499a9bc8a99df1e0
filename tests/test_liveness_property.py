"""Property: whatever the cluster (2-3 engines, an l4 always among them), the trace (long prompts
included, some beyond an l4's KV cache or beyond every engine) and the routing x engine policy
pair, every request ends, finished or failed with a reason: none is stranded."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexussched.engine_sched import ENGINE_POLICIES, make_engine_policy
from nexussched.router.policies import POLICIES, make_policy
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest

PAIRS = [(r, e) for r in POLICIES for e in ENGINE_POLICIES]

clusters = st.lists(st.sampled_from(["a100", "h100", "l4"]), min_size=1, max_size=2).map(
    lambda others: ",".join(f"{g}:1" for g in ["l4", *others])
)
# prompt sizes: mostly conversation-like, some long (tens of thousands: an l4 holds 46,224
# tokens), a few beyond every engine
prompts = st.one_of(
    st.integers(16, 4000),
    st.integers(4000, 60_000),
    st.integers(60_000, 140_000),
)
requests = st.lists(
    st.tuples(st.floats(0.0, 0.5), prompts, st.integers(1, 600)), min_size=1, max_size=24
)


def _trace(items: list[tuple[float, int, int]]) -> Trace:
    t = 0.0
    reqs = []
    for i, (gap, p, o) in enumerate(items):
        t += gap
        reqs.append(TraceRequest(id=i, arrival=t, prompt_tokens=p, output_tokens=o))
    return Trace("prop", reqs)


@pytest.mark.parametrize(("routing", "engine"), PAIRS)
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cluster=clusters, items=requests, timeout=st.sampled_from([None, None, 5.0]))
def test_no_request_is_ever_stranded(routing, engine, cluster, items, timeout):
    profiles = parse_cluster(cluster)
    if routing == "splitwise" and len(profiles) < 2:
        return
    policy = make_policy(routing)
    sim = ClusterSim(
        profiles,
        policy,
        lambda i, n: make_engine_policy(engine, engine_name=n, slo_ttft=2.0, slo_tpot=0.1, seed=i),
        client_timeout=timeout,
        view="oracle" if getattr(policy, "oracle", False) else "live",  # oracle ablations
    )
    res = sim.run(_trace(items), 2.0, 0.1)
    stranded = [r.id for r in res.requests if not r.ended]
    assert stranded == [], f"{routing}+{engine} on {cluster}: stranded {stranded}"
    for r in res.requests:
        assert (r.finish == r.finish) != (r.failure is not None)  # exactly one ending
        if r.failure is not None:
            assert r.error, r.failure
    for e in res.engines:
        assert not e.running and not e.waiting and e.free_blocks == e.total_blocks
