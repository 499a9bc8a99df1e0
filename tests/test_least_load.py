"""least_load's load signals: the scraped count corrected by the router's own sends and finishes
(default), the router's own count in flight only, and the least loaded of k sampled engines."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from nexussched.router.policies import LeastLoad, RequestInfo


@dataclass
class View:
    num_running: int = 0
    num_waiting: int = 0
    inflight: int = 0
    last_scrape: float = 0.0
    healthy: bool = True
    kv_usage: float = 0.0


def _req(i: int) -> RequestInfo:
    return RequestInfo(
        id=i, prompt_tokens=100, max_tokens=50, arrival=0.0, slo_ttft=2.0, slo_tpot=0.1
    )


def test_the_scrape_signal_counts_sends_since_the_scrape_and_the_inflight_one_only_its_own():
    # engine 0 was scraped busy (10) but this router has 2 there; engine 1 scraped 4, 4 in flight
    views = [View(num_running=10, inflight=2, last_scrape=1.0),
             View(num_running=4, inflight=4, last_scrape=1.0)]  # fmt: skip
    assert LeastLoad().route(_req(0), views, 1.0) == 1
    assert LeastLoad(signal="inflight").route(_req(0), views, 1.0) == 0
    # sends since the scrape count until the next one: 7 sends to engine 1 make it 11 > 10
    ll = LeastLoad()
    picks = [ll.route(_req(i), views, 1.1) for i in range(8)]
    assert picks[:6] == [1] * 6 and 0 in picks[6:]
    # a new scrape starts the count again
    views[1].last_scrape = 2.0
    assert ll.route(_req(9), views, 2.0) == 1


def test_sampling_k_engines_picks_the_least_loaded_of_the_sample():
    loads = [0, 5, 6, 9]
    views = [View(inflight=n) for n in loads]
    picks = Counter(
        LeastLoad(seed=s, signal="inflight", sample=2).route(_req(0), views, 0.0)
        for s in range(400)
    )
    # the busiest never wins a pair; the idlest wins every pair it is drawn in (half of them)
    assert picks[3] == 0
    assert 0.4 < picks[0] / 400 < 0.6
    assert picks[1] > picks[2] > 0
    # with all engines compared it is always the idlest
    assert {LeastLoad(seed=s, signal="inflight").route(_req(0), views, 0.0) for s in range(50)} == {
        0
    }
    # an unhealthy engine is never drawn
    views[0].healthy = False
    assert all(
        LeastLoad(seed=s, signal="inflight", sample=2).route(_req(0), views, 0.0) != 0
        for s in range(100)
    )


def test_equal_engines_split_ties_at_random():
    views = [View(), View()]
    picks = Counter(LeastLoad(seed=s, signal="inflight").route(_req(0), views, 0.0)
                    for s in range(200))  # fmt: skip
    assert 60 < picks[0] < 140


@pytest.mark.parametrize("kw", [{"signal": "kv"}, {"sample": 1}, {"sample": -2}])
def test_bad_knobs_are_refused(kw):
    with pytest.raises(ValueError):
        LeastLoad(**kw)
