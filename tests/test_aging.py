"""Bounded unfairness: LENS's Moore-Hodgson deferral and PRISM's late list age out; a request
deferred longer than `age_limit` x its TTFT SLO is served in arrival order."""

from __future__ import annotations

import math

import pytest

from nexussched.engine_sched import LensConfig, SeqState, StepState, plan_step
from nexussched.engine_sched.lens import order_prefills
from nexussched.router.policies.base import RequestInfo
from nexussched.router.policies.prism import Prism, PrismConfig

COEF = (8e-5, 5e-9, 1e-4, 5e-8, 1e-2)  # 80 us per prefill token, 10 ms per step
NOW = 100.0


def waiting(i, prompt, arrival, slo_ttft=1.0):
    return SeqState(i, prompt, 0, 0, 100, arrival, False, slo_ttft, 0.1, 0, None)


def decode(i, ctx=1000, g=10, slo=0.1):
    ft = NOW - slo * (g - 1)  # exactly on its TPOT target: no bank to spend
    return SeqState(i, ctx - g + 1, ctx, g, 200, ft - 0.5, True, 2.0, slo, 0, ft)


def test_a_deferred_prefill_is_served_first_once_it_has_aged():
    # a 20k-token prompt cannot meet its 1 s TTFT; three short ones still can
    small = [waiting(10 + i, 1000, arrival=NOW - 0.1) for i in range(3)]
    young = waiting(1, 20_000, arrival=NOW - 0.2)
    order, late = order_prefills([young, *small], NOW, COEF[0], COEF[1], 1.0, LensConfig())
    assert late == 1 and order[-1].id == 1  # deferred behind the others
    # the same request after 3.5 s (past 2x its 1 s SLO): first, and no longer counted late
    old = waiting(1, 20_000, arrival=NOW - 3.5)
    order, late = order_prefills([*small, old], NOW, COEF[0], COEF[1], 1.0, LensConfig())
    assert order[0].id == 1
    # without a bound it stays deferred however long it waits
    order, late = order_prefills(
        [*small, old], NOW, COEF[0], COEF[1], 1.0, LensConfig(age_limit=math.inf)
    )
    assert order[-1].id == 1 and late == 1


def test_aged_prefills_go_in_arrival_order():
    a = waiting(1, 500, arrival=NOW - 9.0)
    b = waiting(2, 9000, arrival=NOW - 8.0)
    c = waiting(3, 100, arrival=NOW - 7.0)
    order, late = order_prefills([c, b, a], NOW, COEF[0], COEF[1], 1.0, LensConfig())
    assert [p.id for p in order] == [1, 2, 3] and late == 0


def test_an_aged_prefill_takes_the_whole_token_budget_as_vllm_would():
    decodes = [decode(i) for i in range(64)]  # they leave little step time for prefill
    st = StepState(NOW, decodes, [waiting(1, 6000, arrival=NOW - 10.0)], 100_000, 200_000, 16,
                   256, 2048, len(decodes))  # fmt: skip
    young = plan_step(st, COEF, LensConfig(age_limit=math.inf))[0]
    aged = plan_step(st, COEF, LensConfig())[0]
    assert young.chunk_cap.get(1, 0) < 2048 - 64
    assert aged.chunk_cap[1] == 2048 - 64  # the budget less one token per decode


class _View:
    def __init__(self, name: str) -> None:
        self.name, self.healthy, self.num_running, self.num_waiting = name, True, 0, 0
        self.kv_usage, self.last_scrape, self.block_size, self.num_gpu_blocks = 0.0, 0.0, 16, 30000
        self.inflight = self.inflight_prompt_tokens = self.inflight_max_tokens = 0


def test_prism_serves_an_aged_late_request_before_on_time_ones():
    p = Prism(PrismConfig(age_limit=4.0, rebind=False, hold_for_pace=True))
    views = [_View("a")]
    assert p.route(RequestInfo(0, 100_000, 10, 0.0, 2.0, 0.1), views, 0.0) == 0  # busy for long
    late = RequestInfo(1, 200, 10, 0.1, 2.0, 0.1)
    assert p.route(late, views, 0.1) is None
    assert p.pull(0, views, 3.0) == []  # it is late (hopeless) now, and the engine has no room
    assert p.held == 1
    on_time = RequestInfo(2, 200, 10, 9.0, 2.0, 0.1)
    p.on_finish(0, 0, 9.0)
    assert p.route(on_time, views, 9.0) == 0  # an idle engine takes the newcomer at once
    # past 4 x 2 s, the late one goes first to the next engine with room, before newer work
    p.on_finish(2, 0, 9.05)
    got = p.pull(0, views, 9.05)
    assert [r.id for r in got] == [1]


def test_prism_age_limit_must_be_positive():
    with pytest.raises(ValueError, match="age_limit"):
        PrismConfig(age_limit=0.0)


def test_prism_does_not_move_a_request_that_would_be_late_where_it_goes():
    # Re-binding puts a request at the back of another engine's queue. One that cannot meet its
    # TTFT there any more gains no SLO by moving, and under load it can starve at the back of the
    # line (issue 9's bar): it stays. An on-time request is moved as before.
    from tests.test_prism import View, info, teach

    for ttft, expect_moves in ((2.0, True), (0.05, False)):
        p = Prism(late_binding=False, rebind_gain=0.1, max_moves=1)
        teach(p, 0, 1.0)
        teach(p, 1, 1.0)
        views = [View("a"), View("b", healthy=False)]
        for k in range(5):
            assert p.route(info(k, prompt=4000, ttft=ttft), views, 0.0) == 0
        views[0].num_waiting = 3
        views[1].healthy = True
        assert bool(p.tick(views, 0.01)) is expect_moves
