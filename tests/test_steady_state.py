"""Steady-state measurement: failure reasons, stranded and starved counts, throughput over the
arrival window, the stability test, and client timeouts (simulator and live)."""

from __future__ import annotations

import math
import time
import urllib.request

import pytest

from nexussched.eval.live import replay_live
from nexussched.eval.metrics import RequestOutcome, stability, summarize
from nexussched.eval.replay import SimSetup, simulate
from nexussched.eval.sweep import goodput_sweep
from nexussched.eval.table import format_table
from nexussched.router.policies import RoundRobin
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest

MODEL = "sim-llama-3-8b"
NAN = float("nan")


def out(i: int, arrival: float, ttft: float, done: bool = True, failure=None, slo=1.0):
    return RequestOutcome(
        i, arrival, 10, 5, ttft, 0.01 if done else NAN, ttft + 0.1 if done else NAN, 0.01,
        slo, 0.05, done, failure=failure,
    )  # fmt: skip


def test_summary_counts_failures_by_reason_strandings_and_starvation():
    outs = [
        out(0, 0.0, 0.5),
        out(1, 1.0, 12.0),  # served, but past 10x its 1 s SLO: starved
        out(2, 2.0, NAN, False, "timeout"),
        out(3, 3.0, NAN, False, "rejected"),
        out(4, 4.0, NAN, False, "stranded"),
    ]
    s = summarize(outs)
    assert s["offered"] == 5 and s["completed"] == 2
    assert s["failed"] == 2 and s["failure_reasons"] == {"timeout": 1, "rejected": 1}
    assert s["stranded"] == 1
    assert s["starved_share"] == pytest.approx(4 / 5)
    # completions per second of the 4 s arrival window, not of the makespan (13.1 s)
    assert s["throughput_rps"] == pytest.approx(2 / 4.0)


def test_stability_tells_a_growing_queue_from_a_burst_that_drains():
    n = 400
    steady = [out(i, i * 0.1, 0.2) for i in range(n)]
    # served at a third of the arrival rate: the backlog keeps growing
    growing = [out(i, i * 0.1, i * 0.2) for i in range(n)]
    # a burst in the middle that has drained before the last quarter
    burst = [out(i, i * 0.1, 5.0 if 100 <= i < 200 else 0.2) for i in range(n)]
    # most requests time out (never served): failures do not hide the overload
    timeouts = [out(i, i * 0.1, NAN, False, "timeout") if i % 2 else out(i, i * 0.1, 0.2)
                for i in range(n)]  # fmt: skip
    assert stability(steady)[0] and stability(burst)[0]
    ok, growth = stability(growing)
    assert not ok and growth > 20
    assert not stability(timeouts)[0]
    assert summarize(growing)["stable"] is False


def test_goodput_sweep_ignores_unstable_runs():
    # attainment stays high, but past scale 2 the slice hides a growing queue
    def run(k: float) -> dict:
        return {"slo_attainment": 0.95, "stable": k <= 2.0}

    res = goodput_sweep(run, start=1.0, iters=8)
    assert res.goodput_scale is not None and 1.8 < res.goodput_scale <= 2.0


def test_table_shows_the_new_columns_and_units():
    s = summarize([out(0, 0.0, 0.5), out(1, 1.0, NAN, False, "timeout")])
    s.update(policy="round_robin", engine_policy="vllm_default", rate_rps=1.0, goodput_rps=None)
    text = format_table([s])
    head = text.splitlines()[0]
    for col in ("failed", "stranded", "starved", "stable"):
        assert col in head
    assert "units:" in text and "requests/s" in text and "seconds" in text


def _long_then_short() -> Trace:
    # a 40k-token prompt keeps an l4 busy for seconds; a short one comes after the timeout
    return Trace(
        "t",
        [
            TraceRequest(id=0, arrival=0.0, prompt_tokens=40000, output_tokens=4),
            TraceRequest(id=1, arrival=1.5, prompt_tokens=100, output_tokens=4),
        ],
    )


def test_client_timeout_cancels_the_request_and_frees_its_kv():
    cluster = ClusterSim(parse_cluster("l4:1"), RoundRobin(), client_timeout=1.0)
    res = cluster.run(_long_then_short(), slo_ttft=2.0, slo_tpot=0.1)
    long, short = res.requests
    eng = res.engines[0]
    assert long.failure == "timeout" and math.isnan(long.first_token)
    assert "1s" in (long.error or "")
    assert short.finish == short.finish  # served once the long one was dropped
    assert eng.free_blocks == eng.total_blocks and not eng.running and not eng.waiting
    # without a timeout the same long prompt is served
    res = ClusterSim(parse_cluster("l4:1"), RoundRobin()).run(_long_then_short(), 2.0, 0.1)
    assert all(r.failure is None and r.finish == r.finish for r in res.requests)


def test_simulate_reports_timeouts_in_results():
    s = simulate(_long_then_short(), SimSetup(parse_cluster("l4:1"), client_timeout=1.0),
                 "round_robin").summary  # fmt: skip
    assert s["client_timeout"] == 1.0
    assert s["failure_reasons"] == {"timeout": 1} and s["stranded"] == 0
    assert s["completed"] == 1 and s["starved_share"] == pytest.approx(0.5)


def _metric(url: str, name: str, label: str = "") -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def slow_engine(spawn_module):
    e = spawn_module("engine-sim", "--time-scale", "0.05")
    return e


async def test_live_client_timeout_disconnects_and_the_engine_aborts(slow_engine):
    e = slow_engine
    aborted = _metric(e.url, "vllm:request_success_total", 'finished_reason="abort"')
    # 100k prompt tokens: about 30 simulated seconds to the first token, 1.5 s of wall time
    trace = Trace("t", [TraceRequest(id=0, arrival=0.0, prompt_tokens=100000, output_tokens=4)])
    outs = await replay_live(e.url, trace, MODEL, 2.0, 0.1, time_scale=0, client_timeout=0.3)
    assert not outs[0].completed and outs[0].failure == "timeout"
    assert summarize(outs)["failure_reasons"] == {"timeout": 1}

    # the disconnect reached the engine: it aborted the request and holds nothing
    def state() -> tuple[float, float, float]:
        return (
            _metric(e.url, "vllm:request_success_total", 'finished_reason="abort"') - aborted,
            _metric(e.url, "vllm:num_requests_running"),
            _metric(e.url, "vllm:kv_cache_usage_perc"),
        )

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and state() != (1.0, 0.0, 0.0):
        time.sleep(0.1)
    assert state() == (1.0, 0.0, 0.0)
