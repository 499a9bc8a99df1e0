"""No harm: PRISM never holds a request while an engine has predicted room for it."""

from __future__ import annotations

from nexussched.eval.replay import SimSetup, simulate
from nexussched.router.policies import Prism
from nexussched.sim import get_profile
from nexussched.traces import scenario
from tests.test_prism import View, info, teach


def test_an_engine_with_kv_room_gets_the_request_even_when_paced_and_backlogged():
    views = [View("a")]
    held = Prism(slack=0.0, queue_limit=0.0, hold_for_pace=True)
    free = Prism(slack=0.0, queue_limit=0.0)
    for p in (held, free):
        teach(p, 0, 1.0)
    got_held = [held.route(info(k, prompt=3000), views, 0.0) for k in range(5)]
    got_free = [free.route(info(k, prompt=3000), views, 0.0) for k in range(5)]
    assert got_held[0] == 0 and None in got_held  # pacing holds requests the engine could run
    assert got_free == [0] * 5 and free.held == 0  # by default it never does


def test_an_engine_without_kv_room_still_makes_requests_wait_at_the_router():
    views = [View("a")]
    views[0].num_gpu_blocks = 100  # 1,600 tokens of KV
    p = Prism()
    teach(p, 0, 1.0)
    p.tick(views, 0.0)  # reads the engine's KV size (vllm:cache_config_info)
    got = [p.route(info(k, prompt=500), views, 0.0) for k in range(6)]
    assert got[0] == 0 and None in got


def test_one_engine_prism_serves_every_request_exactly_as_sending_it_straight_there():
    # a loaded single engine: nothing to choose, so PRISM must add nothing (late binding that
    # holds requests the engine could run would raise these TTFTs)
    trace = scenario("poisson", n=400, seed=4, rate=12.0)
    setup = SimSetup([get_profile("a100")], seed=1)
    direct = simulate(trace, setup, "round_robin").outcomes
    prism = simulate(trace, setup, "prism").outcomes
    assert max(o.ttft for o in direct) > 5 * min(o.ttft for o in direct)  # it queues
    assert [o.id for o in prism] == [o.id for o in direct]
    assert [o.ttft for o in prism] == [o.ttft for o in direct]
