"""Cluster simulation, routing baselines, metrics, goodput sweep and the eval CLI."""

from __future__ import annotations

import json
import re

import pytest
from shown import decode_png, shows

from nexussched.cli import main
from nexussched.eval.metrics import RequestOutcome, summarize
from nexussched.eval.replay import SimSetup, simulate
from nexussched.eval.sweep import goodput_sweep
from nexussched.router.policies import LeastLoad, RequestInfo, RoundRobin, make_policy
from nexussched.sim import get_profile, parse_cluster
from nexussched.traces import scenario


class View:
    """The EngineView contract, as of a scrape at t=0."""

    def __init__(self, name, running=0, waiting=0, inflight=0, healthy=True):
        self.name, self.num_running, self.num_waiting = name, running, waiting
        self.inflight, self.healthy, self.kv_usage = inflight, healthy, 0.0
        self.last_scrape = 0.0
        self.block_size, self.num_gpu_blocks = 16, 25000
        self.inflight_prompt_tokens = self.inflight_max_tokens = 0


def info(i=0):
    return RequestInfo(i, 100, 10, 0.0, 2.0, 0.1)


def test_round_robin_cycles_and_skips_unhealthy():
    rr = RoundRobin()
    vs = [View("a"), View("b", healthy=False), View("c")]
    assert [rr.route(info(), vs, 0) for _ in range(4)] == [0, 2, 0, 2]


def test_least_load_picks_fewest_queued_plus_running():
    ll = LeastLoad()
    vs = [View("a", 3, 2), View("b", 1, 1), View("c", 4, 0)]
    assert ll.route(info(), vs, 0) == 1
    vs[1].inflight = 9  # the router knows of more in flight than the engine reports yet
    assert ll.route(info(), vs, 0) == 2


def test_simulation_is_deterministic_per_seed_and_completes_everything():
    trace = scenario("poisson", n=400, seed=2, rate=20.0)
    setup = SimSetup([get_profile("a100")] * 3, seed=5)
    a = simulate(trace, setup, "least_load").outcomes
    b = simulate(trace, setup, "least_load").outcomes
    c = simulate(trace, SimSetup([get_profile("a100")] * 3, seed=6), "least_load").outcomes
    assert [o.ttft for o in a] == [o.ttft for o in b]
    assert [o.ttft for o in a] != [o.ttft for o in c]
    assert all(o.completed for o in a)


def test_least_load_beats_round_robin_on_a_heterogeneous_cluster():
    trace = scenario("poisson", n=1500, seed=3, rate=14.0)
    setup = SimSetup(parse_cluster("h100:1,l4:1"))
    rr = simulate(trace, setup, "round_robin").summary
    ll = simulate(trace, setup, "least_load").summary
    assert ll["slo_attainment"] > rr["slo_attainment"]
    assert ll["ttft_p99"] < rr["ttft_p99"]


def test_summary_counts_failures_against_attainment():
    ok = RequestOutcome(0, 0.0, 10, 5, 0.1, 0.01, 0.2, 0.02, 1.0, 0.05, True)
    slow = RequestOutcome(1, 0.0, 10, 5, 3.0, 0.01, 3.1, 0.02, 1.0, 0.05, True)
    failed = RequestOutcome(
        2, 0.0, 10, 5, float("nan"), float("nan"), float("nan"), 0.0, 1.0, 0.05, False, error="boom"
    )
    s = summarize([ok, slow, failed])
    assert s["requests"] == 3 and s["completed"] == 2 and s["failed"] == 1
    assert s["slo_attainment"] == pytest.approx(1 / 3)


def test_goodput_sweep_finds_the_threshold():
    # attainment falls linearly: 1.0 at scale 0 to 0 at scale 10; 0.9 is reached at scale 1.0
    res = goodput_sweep(lambda k: {"slo_attainment": 1 - k / 10}, start=4.0, iters=12)
    assert res.goodput_scale == pytest.approx(1.0, rel=0.02)
    assert [p[0] for p in res.points] == sorted(p[0] for p in res.points)
    none = goodput_sweep(lambda k: {"slo_attainment": 0.5}, start=1.0)
    assert none.goodput_scale is None


@pytest.mark.parametrize("start", [0.5, 1.1, 2.3])
def test_goodput_sweep_with_a_small_step_lands_within_its_resolution(start):
    # attainment passes up to scale 1.0 exactly; a 1.25 step and 3 bisections resolve 1.25**(1/8)
    calls: list[float] = []

    def run(k: float) -> dict:
        calls.append(k)
        return {"slo_attainment": 0.95 if k <= 1.0 else 0.5}

    res = goodput_sweep(run, start=start, iters=3, step=1.25)
    assert res.goodput_scale <= 1.0 < res.goodput_scale * 1.25 ** (1 / 8) * 1.0001
    # the bracket moves by 1.25, never doubles past the threshold
    assert max(calls) <= max(start, 1.0) * 1.25 * 1.0001
    with pytest.raises(ValueError, match="step"):
        goodput_sweep(run, step=1.0)


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown routing policy 'nope'"):
        make_policy("nope")


REQUIRED = [
    "policy",
    "engine_policy",
    "trace",
    "rate_scale",
    "engines",
    "requests",
    "completed",
    "slo_attainment",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p99",
    "e2e_p50",
    "e2e_p99",
    "throughput_rps",
    "goodput_rps",
]


def test_eval_cli_writes_results_plot_and_telemetry(tmp_path, capsys):
    out = tmp_path / "out"
    tel = tmp_path / "tel.jsonl"
    rc = main(
        [
            "eval",
            "--trace",
            "bundled",
            "--head",
            "300",
            "--cluster",
            "a100:2,l4:1",
            "--policies",
            "round_robin,least_load",
            "--rate-scale",
            "2",
            "--out",
            str(out),
            "--telemetry-out",
            str(tel),
            "--no-progress",
        ]
    )
    assert rc == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["policy"] for r in runs] == ["round_robin", "least_load"]
    for r in runs:
        assert set(REQUIRED) <= set(r)
        assert r["engine_policy"] == "vllm_default" and r["engines"] == 3
        assert r["requests"] == 300 and r["completed"] + r["failed"] == 300
        assert r["goodput_rps"] is None
    # on a mixed cluster, sending by load beats taking turns (measured 97.7% vs 72.3%)
    assert runs[1]["slo_attainment"] > runs[0]["slo_attainment"] + 0.1
    # the printed table shows the numbers of results.json, best row first, units in the headers
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    head_at = next(i for i, x in enumerate(lines) if x.startswith("router "))
    head = re.split(r"\s{2,}", lines[head_at].strip())
    assert head[:11] == ["router", "engine policy", "offered req/s", "requests", "SLO met",
                         "TTFT p50 s", "TTFT p99 s", "TPOT p50 ms", "TPOT p99 ms", "served req/s",
                         "failed"]  # fmt: skip
    assert "goodput req/s" not in head  # no goodput search in this run
    shown_rows = lines[head_at + 2 : head_at + 4]
    for r, line in zip(sorted(runs, key=lambda r: -r["slo_attainment"]), shown_rows, strict=True):
        cells = line.split()
        assert cells[:2] == [r["policy"], r["engine_policy"]] and int(cells[3]) == 300
        ms = [None if v is None else v * 1000 for v in (r["tpot_p50"], r["tpot_p99"])]
        shown_values = [r["rate_rps"], None, r["slo_attainment"], r["ttft_p50"], r["ttft_p99"],
                        *ms, r["throughput_rps"]]  # fmt: skip
        for cell, v in zip(cells[2:10], shown_values, strict=True):
            assert v is None or shows(cell, v), (r["policy"], cell, v)
    assert "served req/s: requests completed per second of the arrival window" in printed
    decode_png(out / "attainment.png")
    decode_png(out / "timeline.png")
    # one telemetry file, every record tagged with its run
    assert list(tmp_path.glob("tel*.jsonl")) == [tel]
    recs = [json.loads(line) for line in tel.read_text().splitlines()]
    assert {r["engine"] for r in recs} == {"a100-0", "a100-1", "l4-2"}
    assert {r["run"] for r in recs} == {"round_robin+vllm_default@x2", "least_load+vllm_default@x2"}


def test_eval_cli_goodput_sweep(tmp_path):
    out = tmp_path / "g"
    rc = main(
        [
            "eval",
            "--trace",
            "bundled",
            "--head",
            "300",
            "--engines",
            "2",
            "--policies",
            "least_load",
            "--goodput",
            "--rate-scale",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) > 3
    good = runs[0]["goodput_rps"]
    assert good and good > 0
    passing = [r for r in runs if r["slo_attainment"] >= 0.9]
    assert max(r["rate_rps"] for r in passing) == pytest.approx(good, rel=1e-6)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--rate-scale", "0"], "must be positive"),
        (["--slo-ttft", "-1"], "must be positive"),
        (["--policies", "bogus"], "unknown routing policy"),
        (["--trace", "/nonexistent.csv"], "nonexistent"),
        (["--cluster", "a100:x"], "not an integer"),
    ],
)
def test_eval_cli_bad_input_is_one_clear_line(tmp_path, capsys, args, msg):
    rc = main(["eval", "--out", str(tmp_path), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and err.count("\n") == 1
