"""`nexussched report`: a tiny run of the scenario matrix writes report.md, results.json, PNGs."""

from __future__ import annotations

import json

import pytest
from shown import decode_png, shows

from nexussched.cli import main
from nexussched.eval.report import compute_bars
from nexussched.eval.value_of_information import SETTINGS


def test_tiny_report_writes_markdown_tables_and_plots(tmp_path, traces_dir):
    out = tmp_path / "rep"
    rc = main(
        ["report", "--out", str(out), "--scenarios", "heterogeneous",
         "--policies", "round_robin,prism,no_such_policy", "--requests-scale", "0.05",
         "--bisect", "1", "--decisions", "300", "--workers", "1"]
    )  # fmt: skip
    assert rc == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# nexussched evaluation report\n\n## Findings") and "PASS" not in md
    assert "## heterogeneous" in md and "prism+vllm_default" in md
    assert "Skipped" in md and "no_such_policy" in md  # unknown policies are noted, not fatal
    res = json.loads((out / "results.json").read_text())
    het = res["scenarios"]["heterogeneous"]
    assert het["requests"] == 150
    pairs = het["pairs"]
    assert set(pairs) >= {"round_robin+vllm_default", "prism+vllm_default"}
    # the scenario's table shows exactly the numbers of results.json, row by row
    rows = scenario_rows(md, "heterogeneous")
    assert set(rows) == set(pairs)
    cols = {"SLO att": "slo_attainment", "TTFT att": "ttft_attainment",
            "TPOT att": "tpot_attainment", "TTFT p50": "ttft_p50", "TTFT p99": "ttft_p99",
            "TPOT p50": "tpot_p50", "TPOT p99": "tpot_p99", "moves": "moves"}  # fmt: skip
    for key, row in rows.items():
        s = pairs[key]["at_operating_point"]
        assert s["requests"] == 150
        for col, field in cols.items():
            assert shows(row[col], s[field]), (key, col, row[col], s[field])
        assert shows(row["goodput req/s"], pairs[key]["goodput_rps"]), (key, row)
    rate = float(md.split("Operating point:", 1)[1].split("=", 1)[1].split("req/s")[0])
    assert shows(f"{rate}", pairs["round_robin+vllm_default"]["at_operating_point"]["rate_rps"])
    # the value of information: every setting x the table's pairs this run has, at the
    # operating point; the default world's row is the matrix's own run there
    voi = res["value_of_information"]
    assert voi["scenario"] == "heterogeneous" and voi["operating_scale"] == het["operating_scale"]
    want = {("prism", "vllm_default"), ("prism", "lens"), ("round_robin", "lens")}
    assert {tuple(pe) for pe in voi["pairs"]} == want
    by = {(r["setting"], r["policy"], r["engine_policy"]): r for r in voi["rows"]}
    assert {s for s, _, _ in by} == {st.label for st in SETTINGS} and len(by) == 4 * len(want)
    for st in SETTINGS:
        for p, e in want:
            r = by[(st.label, p, e)]
            assert (r["view"], r["max_tokens_mode"]) == (st.info.view, st.info.max_tokens)
    for p, e in want:
        mine = by[("live, cap:4096 (default)", p, e)]
        assert mine == {**pairs[f"{p}+{e}"]["at_operating_point"], "setting": mine["setting"]}
    section = md.split("\n## Value of information\n", 1)[1].split("\n## ", 1)[0]
    for st in SETTINGS:
        line = next(x for x in section.splitlines() if x.startswith(f"| {st.label} |"))
        r = by[(st.label, "prism", "lens")]
        assert f"{r['slo_attainment'] * 100:.1f}%" in line, line
    # where the CPU went: every run's own seconds, summed per scenario, add up to the total
    assert set(res["cpu_s_by_scenario"]) == {"heterogeneous"}
    assert res["cpu_s_by_scenario"]["heterogeneous"] == pytest.approx(res["cpu_s"])
    assert all(r["cpu_s"] > 0 for r in het["pairs"]["prism+vllm_default"]["runs"])
    split = res["cpu_s_by_scenario"]["heterogeneous"] / 60
    assert f"worker(s); by scenario: heterogeneous {split:.1f})" in md
    dps = res["decision_throughput"]["decisions_per_s"]
    assert f"Decision throughput: {dps:,.0f} decisions/s" in md
    # the plots decode, at the size their headers state, and are drawn
    for png in ("goodput.png", "attainment_heterogeneous.png"):
        assert f"]({png})" in md
        decode_png(out / png)


def scenario_rows(md: str, scenario: str) -> dict[str, dict[str, str]]:
    """The per-pair table under `## scenario`: {pair: {column: cell}}."""
    section = md.split(f"\n## {scenario}\n", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in section.splitlines() if x.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def _entry(att: dict[str, float], good: dict[str, float]) -> dict:
    pairs = {}
    for key, a in att.items():
        p, e = key.split("+")
        pairs[key] = {
            "policy": p,
            "engine_policy": e,
            "at_operating_point": {"slo_attainment": a, "rate_rps": 10.0},
            "goodput_rps": good.get(key, 0.0),
        }
    return {"pairs": pairs}


def test_bars_compare_with_round_robin_and_the_best_other_baseline():
    att = {
        "round_robin+vllm_default": 0.6,
        "least_load+vllm_default": 0.7,
        "round_robin+lens": 0.9,
        "prism+lens": 0.9,
    }
    good = {"round_robin+vllm_default": 2.0, "least_load+vllm_default": 4.0, "prism+lens": 6.0}
    res = {"scenarios": {"heterogeneous": _entry(att, good), "azure-conv": _entry(att, good)}}
    bars = compute_bars(res)
    assert abs(bars["mean_gain_rr"] - 0.5) < 1e-9  # 0.9 / 0.6
    assert abs(bars["mean_gain_best"] - (0.9 / 0.7 - 1)) < 1e-9  # vllm_default baselines only
    assert abs(bars["mean_gain_best_any"]) < 1e-9  # round_robin+lens ties prism+lens
    (row,) = bars["goodput_rows"]
    assert row["x_rr"] == 3.0 and row["x_best"] == 1.5 and row["best_other"].startswith("least")


def test_report_gives_splitwise_its_best_prefill_decode_split(tmp_path, traces_dir):
    out = tmp_path / "rep"
    rc = main(
        ["report", "--out", str(out), "--scenarios", "heterogeneous",
         "--policies", "round_robin,splitwise", "--engine-policies", "vllm_default",
         "--requests-scale", "0.05", "--bisect", "0", "--decisions", "0", "--workers", "1"]
    )  # fmt: skip
    assert rc == 0
    sc = json.loads((out / "results.json").read_text())["scenarios"]["heterogeneous"]["scenario"]
    k = sc["policy_kwargs"]["splitwise"]["prefill_nodes"]
    assert k in (2, 4, 6)  # a quarter, half or three quarters of the 8 engines
    assert f"{k} prefill nodes" in (out / "report.md").read_text()


def _drive(job, attainment):
    """Run a report job generator by hand: each task's run attains attainment(scale)."""
    from nexussched.eval.jobs import Spawn

    asked: list[float] = []
    try:
        got = job.send(None)
        while True:
            assert not isinstance(got, Spawn)
            res = []
            for task in got:
                scale = task[4]
                asked.append(scale)
                res.append({"slo_attainment": attainment(scale), "stable": True})
            got = job.send(res)
    except StopIteration as stop:
        return stop.value, asked


@pytest.mark.parametrize("cliff", [False, True])
@pytest.mark.parametrize("crossing", [0.07, 0.4, 0.93, 1.0, 1.37, 3.1, 7.5])
def test_goodput_search_brackets_the_crossing_closely_in_a_few_runs(crossing, cliff):
    """From the operating point (scale 1), the search finds a passing and a failing rate around
    where a monotone curve crosses 90%, within 12%, in at most 9 runs (a fixed grid took 7-8
    whatever the pair)."""
    from nexussched.eval.report import (
        GOODPUT,
        ReportConfig,
        Scenario,
        _Ctx,
        _goodput_from,
        _pair_job,
    )

    def attain(scale: float) -> float:  # 90% at `crossing`, falling with rate
        if cliff:  # flat near 98%, then a steep fall (interpolation aims short of it)
            return max(0.0, min(0.98, 0.98 + 1e-9 - 2.0 * (scale / crossing - 0.96)))
        return min(1.0, GOODPUT * (crossing / scale) ** 0.5)

    sc = Scenario("s", "t", 100, "a100:2", 2.0, 0.1, 1.0, "test")
    ctx = _Ctx(ReportConfig(out=None), [("round_robin", "vllm_default")], lambda m: None)  # type: ignore[arg-type]
    P, asked = _drive(_pair_job(ctx, sc, 100, "round_robin", "vllm_default", 1.0), attain)
    assert asked[0] == 1.0 and len(asked) <= 9
    lo, hi = _goodput_from(P)
    assert lo is not None and hi is not None
    assert lo <= crossing * (1 + 1e-9) < hi
    assert hi / lo <= 1.12, (lo, hi, sorted(asked))


def test_full_replays_the_larger_mooncake_slice(tmp_path, traces_dir):
    """The default report replays mooncake-conv's first 400 requests; --full its first 1,500."""
    sizes = {}
    for flag in ([], ["--full"]):
        out = tmp_path / ("full" if flag else "default")
        rc = main(
            ["report", "--out", str(out), "--scenarios", "mooncake-conv",
             "--policies", "round_robin", "--engine-policies", "vllm_default",
             "--requests-scale", "0.1", "--bisect", "0", "--decisions", "0", "--workers", "1",
             "--information-scenario", "none", *flag]
        )  # fmt: skip
        assert rc == 0
        res = json.loads((out / "results.json").read_text())
        sizes[bool(flag)] = res["scenarios"]["mooncake-conv"]["requests"]
    assert sizes == {False: 50, True: 150}  # 40 -> the 50-request floor
