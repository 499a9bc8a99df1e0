"""PRISM's learning made cheaper must learn as before: the incremental refit against the batch fit
it replaces, the one-pass observe against the plain sums, and the feed's learning budget
(router/telemetry_thin.py): replicas learn the same records, and a thinned feed learns an engine
about as well as one that reads everything."""

from __future__ import annotations

import json

import numpy as np

from nexussched.perfmodel import PerfModel, PerfModelConfig, StepRecord, fit_nnls, mape
from nexussched.perfmodel.features import record_features
from nexussched.router.policies import make_policy
from nexussched.router.telemetry_feed import TelemetryFeed
from nexussched.router.telemetry_thin import RateGate, kept, step_of, thin
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest

COEF = np.array([8e-5, 3e-9, 1.5e-4, 4e-8, 8e-3])


def _records(n: int, seed: int, coef: np.ndarray = COEF, noise: float = 0.05) -> list[StepRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        chunks = tuple(
            (int(rng.integers(1, 512)), int(rng.integers(0, 3000)))
            for _ in range(int(rng.integers(1, 4)) if i % 3 == 0 else 0)
        )
        nd = int(rng.integers(0, 64))
        r = StepRecord(1.0, chunks, nd, nd * int(rng.integers(10, 2000)), step=i)
        r.duration = float(np.dot(coef, record_features(r))) * (1 + noise * rng.standard_normal())
        out.append(r)
    return out


def _batch_coef(m: PerfModel) -> np.ndarray:
    """The fit the model made before the incremental Gram matrix: NNLS over its window's rows
    with their recency weights."""
    X, y, w = m._window()
    return fit_nnls(X, y, w)


def test_the_incremental_refit_equals_the_batch_fit_on_the_same_window() -> None:
    cfg = PerfModelConfig(window=256, refit_every=16, half_life=64.0)
    m = PerfModel(cfg)
    recs = _records(2000, 1)
    checked = 0
    for i, r in enumerate(recs):
        m.observe(r)
        # after the window has wrapped several times (rows leaving through the subtraction,
        # and the periodic rebuilds), at refit points and between them
        if i > 300 and i % 97 == 0:
            m.refit()
            np.testing.assert_allclose(m.coef, _batch_coef(m), rtol=1e-6, atol=1e-15)
            checked += 1
    assert checked >= 15
    # a change of speed (drift: the window is cut to its newest rows) and after it
    for r in _records(400, 2, COEF * 2.0):
        m.observe(r)
    m.refit()
    np.testing.assert_allclose(m.coef, _batch_coef(m), rtol=1e-6, atol=1e-15)
    assert m.predict_step(num_decodes=10) > 1.8 * (COEF[2] * 10 + COEF[4])  # it did move


def test_the_incremental_refit_recovers_the_coefficients_and_keeps_its_window_weights() -> None:
    m = PerfModel()
    for r in _records(3000, 3, noise=0.0):
        m.observe(r)
    np.testing.assert_allclose(m.coef, COEF, rtol=1e-4)
    # the Gram matrix the refits use is the window's, weighted by recency, rebuilt or not
    G = m._G.copy()
    m._rebuild()
    np.testing.assert_allclose(G, m._G, rtol=1e-9)


def test_prism_learns_each_prefill_step_with_the_models_own_features() -> None:
    """The one-pass sums of PrismPredictor.observe are record_features's and seen_step's."""
    p = make_policy("prism")
    recs = _records(600, 4)  # within one window
    for r in recs:
        p.observe(0, r)
    m = p.model(0)
    m.refit()
    rows = {tuple(x) for x in m._X[: m.samples] if x[0] > 0}
    assert rows == {record_features(r) for r in recs if r.prefill_chunks}
    e = p._eng[0]
    batch = (e.dn, e.dctx)
    e.seen_step(recs[-1])
    assert (e.dn, e.dctx) == batch


def _lines(recs: list[StepRecord]) -> list[str]:
    return [json.dumps(r.to_dict(), separators=(",", ":")) for r in recs]


def test_thinning_keeps_a_nested_share_of_steps_without_aliasing_a_period() -> None:
    steps = range(40000)
    for level in range(1, 5):
        share = sum(kept(s, level) for s in steps) / len(steps)
        assert abs(share - 2.0**-level) < 0.01
        # every 4th step a prefill: the kept ones are not all of one phase
        phases = {s % 4 for s in steps if kept(s, level)}
        assert phases == {0, 1, 2, 3}
        assert all(kept(s, level - 1) for s in steps if kept(s, level))
    recs = _records(500, 5)
    lines = _lines(recs)
    assert [step_of(ln) for ln in lines] == [r.step for r in recs]
    assert step_of(lines[3].encode()) == 3
    keep, top = thin(lines, 3)
    assert [step_of(ln) for ln in keep] == [s for s in range(500) if kept(s, 3)]
    assert top == max(s for s in range(500) if not kept(s, 3))
    # a record whose step cannot be read cheaply is kept (and decoded as before)
    odd = '{"duration": 0.01, "step": "x"}'
    assert thin([odd], 3) == ([odd], -1)


def test_the_rate_gate_rises_with_the_rate_and_falls_back_with_hysteresis() -> None:
    g = RateGate(budget=100.0)
    now = 0.0
    levels = []
    for rate in [50] * 5 + [900] * 10 + [150] * 20 + [40] * 20:
        now += 0.2
        levels.append(g.update(int(rate * 0.2), now))
    assert levels[4] == 0
    assert levels[14] == 4  # 900/s over a 100/s budget: 1 in 16
    assert levels[34] == 1  # 150/s: 1 in 2
    assert levels[-1] == 0
    assert RateGate(budget=0).update(10_000, 1.0) == 0


def _replica(budget: float, level: int | None = None, warmup: int = 0):
    """A PRISM policy behind a telemetry feed; the steps it learns, in order."""
    p = make_policy("prism")
    learned: list[int] = []

    def observe(idx: int, rec: StepRecord) -> None:
        learned.append(rec.step)
        p.observe(idx, rec)

    feed = TelemetryFeed(observe, [], None, learn_budget=budget, seen=p.seen, warmup=warmup)  # type: ignore[arg-type]
    if level is not None:  # a replica that has been running at this engine's rate
        g = feed._gate(0)
        g.level, g.rate, g._t = level, budget * 2.0**level, 0.0
    return p, feed, learned


def _feed(feed: TelemetryFeed, lines: list[str], batch: int, rate: float) -> None:
    now = 0.0
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        now += len(chunk) / rate
        feed.ingest(0, chunk, now)


def test_replicas_at_one_level_learn_the_same_records_whatever_their_polls() -> None:
    """Two router replicas polling one fast engine at different moments (different batches)
    at the same level learn exactly the same records, so they end with the same model; one that
    runs a level higher (say, it measured the rate a little higher) learns a subset of them."""
    lines = _lines(_records(6000, 6))
    reps = [_replica(100.0, 4), _replica(100.0, 4), _replica(100.0, 5)]
    for (_, feed, _), batch in zip(reps, (150, 110, 130), strict=True):
        _feed(feed, lines, batch, 1500.0)  # 1,500 records a second: level 4 (1 in 16)
    (p0, f0, s0), (p1, f1, s1), (_, f2, s2) = reps
    assert [f._gates[0].level for f in (f0, f1, f2)] == [4, 4, 5]
    assert s0 == s1 == [s for s in range(6000) if kept(s, 4)]
    assert set(s2) < set(s0) and len(s2) < 0.6 * len(s0)
    assert f0.last_step[0] == f1.last_step[0] == f2.last_step[0] == 5999
    np.testing.assert_array_equal(p0.model(0).coef, p1.model(0).coef)
    # the newest batch is the engine's newest step, learned or not
    last = json.loads(lines[-1])
    assert p0._eng[0].dn == p1._eng[0].dn == last["num_decodes"] + len(last["prefill_chunks"])
    # below the budget every record is learned
    _, f3, s3 = _replica(100.0)
    _feed(f3, lines[:2000], 15, 75.0)
    assert s3 == list(range(2000)) and f3.thinned == 0
    # and above it, an engine's first `warmup` records
    _, f4, s4 = _replica(100.0, warmup=1000)
    _feed(f4, lines, 150, 1500.0)
    assert s4[:1050] == list(range(1050))  # (the poll that reached 1,000 is learned whole)
    assert f4.thinned > 4000 and set(s4[1050:]) == {s for s in range(1050, 6000) if kept(s, 4)}


def _sim_records(spec: str, n: int, seed: int) -> list[StepRecord]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.06, n))
    reqs = [
        TraceRequest(i, float(t[i]), int(rng.integers(50, 2500)), int(rng.integers(8, 160)))
        for i in range(n)
    ]
    recs: list[StepRecord] = []
    ClusterSim(parse_cluster(spec), make_policy("round_robin"), telemetry=recs.append).run(
        Trace("cost", reqs), 5.0, 0.2
    )
    return recs


def test_a_thinned_feed_learns_an_engine_about_as_well_as_reading_every_record() -> None:
    for spec in ("l4:1", "h100:1"):
        recs = _sim_records(spec, 1400, 7)
        train, held = recs[: len(recs) * 3 // 4], recs[len(recs) * 3 // 4 :]
        lines = _lines(train)
        errs = []
        for budget in (0.0, 100.0):
            p, feed, _ = _replica(budget)
            _feed(feed, lines, 160, 800.0)  # 800 records a second: level 3 under a 100/s budget
            assert (feed.thinned > len(lines) / 2) == (budget > 0)
            errs.append(mape(p.model(0), held)[0])
        full, thinned = errs
        assert thinned < max(0.12, 1.5 * full), (spec, errs)
