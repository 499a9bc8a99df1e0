"""Sim-to-live agreement on a small case: the simulator with the live view predicts what the live
router and real engine-sim processes attain on the same requests."""

from __future__ import annotations

import pytest

from nexussched.eval.sim_live import agreement_table, sim_vs_live
from nexussched.traces import Trace, TraceRequest


@pytest.mark.timeout(600)
def test_sim_and_live_attainment_agree_per_policy():
    # an h100 and an l4, 60 requests whose prompts the l4 prefills too slowly for a 0.4 s TTFT
    # half the time: round robin loses those, prism sends them to the h100; both worlds must say so
    reqs = [
        TraceRequest(i, 0.25 * i, 2500 if i % 2 else 300, 16, slo_ttft=0.4, slo_tpot=0.2)
        for i in range(60)
    ]
    trace = Trace("small", reqs)
    rows = sim_vs_live(trace, ["h100", "l4"], ["round_robin", "prism"], 0.4, 0.2)
    print("\n" + agreement_table(rows))
    by = {r.policy: r for r in rows}
    for r in rows:
        assert r.sim["requests"] == r.live["requests"] == 60
        assert r.live["completed"] == 60
        assert abs(r.gap) <= 10.0, (r.policy, r.gap)
    # the difference the policies make shows in both worlds
    for side in ("sim", "live"):
        rr = getattr(by["round_robin"], side)["slo_attainment"]
        pr = getattr(by["prism"], side)["slo_attainment"]
        assert pr >= rr + 0.2, (side, rr, pr)
