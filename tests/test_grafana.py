"""The Grafana dashboard shipped in the package queries only metrics the router exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import nexussched
from nexussched.router.prom import RouterMetrics

DASHBOARD = Path(nexussched.__file__).parent / "data" / "grafana" / "nexussched-router.json"


def _exported() -> set[str]:
    """Every sample name a router with one backend and some traffic serves on /metrics."""
    b = SimpleNamespace(name="e0", healthy=True, inflight=1, num_running=2, num_waiting=3,
                        kv_usage=0.5)  # fmt: skip
    m = RouterMetrics(lambda: [b])
    m.count("e0", 200)
    m.retries.inc()
    m.backend_failures.labels("e0").inc()
    m.moves.inc()
    m.observe_decision(1e-5)
    m.observe_ttft("e0", 0.1)
    m.observe_e2e("e0", 1.0)
    text = m.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}  # fmt: skip


def test_every_metric_the_dashboard_queries_is_exported():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = {n for e in exprs for n in re.findall(r"\b(nexussched_[a-z0-9_]+)", e)}
    exported = _exported()
    assert used and used <= exported, sorted(used - exported)
    # and it charts every family the router has (each histogram through its buckets)
    families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in exported}
    charted = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - {f for f in families if f.endswith("_created")} <= charted | {
        n for n in families if n + "_total" in charted
    }, sorted(families - charted)


def test_dashboard_panels_have_titles_and_unique_ids():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["title"] and p["targets"] for p in dash["panels"])
