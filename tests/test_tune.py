"""`nexussched tune`: optuna over PRISM/LENS knobs on one slice, reported on another."""

from __future__ import annotations

import json

from nexussched.cli import main
from nexussched.eval.tune import TuneSetup, tune
from nexussched.sim import parse_cluster
from nexussched.traces import scenario, slice_trace


def test_tune_reports_defaults_and_tuned_on_a_separate_slice():
    tr = scenario("poisson", n=600, seed=5, rate=40.0)
    setup = TuneSetup(
        parse_cluster("a100:1,l4:1"),
        slice_trace(tr, 0, 300),
        slice_trace(tr, 300, 600),
        scales=(1.0,),
        engine_policy="vllm_default",
    )
    res = tune(setup, trials=3)
    assert res.trials == 3
    assert res.train_tuned >= res.train_default  # the defaults are trial 0
    assert set(res.best_prism) >= {"tpot_margin", "slack", "order", "max_moves"}
    assert res.best_lens == {}  # vllm_default engines: nothing of LENS to tune
    assert len(res.eval_default) == len(res.eval_tuned) == 1
    assert 0.0 <= res.eval_tuned_mean <= 1.0


def test_tune_cli_writes_the_knobs(tmp_path, capsys):
    out = tmp_path / "tuned.json"
    rc = main(
        ["tune", "--trace", "synthetic:poisson,n=500,rate=30,seed=2", "--train", "0:250",
         "--eval", "250:500", "--cluster", "a100:1,l4:1", "--rate-scale", "1", "--trials", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["trials"] == 2 and d["eval"] == "250:500"
    assert "tpot_margin" in d["prism"]
    if d["engine_policy"] == "lens":
        assert "bank_spend" in d["lens"]
    printed = capsys.readouterr().out
    assert "eval mean" in printed and "train attainment" in printed


def test_tune_cli_rejects_a_bad_slice(capsys):
    rc = main(["tune", "--train", "10:5"])
    assert rc == 2 and "START:STOP" in capsys.readouterr().err
