"""`nexussched tune`: optuna over PRISM/LENS knobs on one slice, reported on another."""

from __future__ import annotations

import json

from nexussched.cli import main
from nexussched.eval.tune import TuneSetup, run_once, tune
from nexussched.router.knobs import load_knobs
from nexussched.sim import parse_cluster
from nexussched.traces import scenario, slice_trace


def test_tuned_knobs_beat_the_defaults_on_held_out_requests():
    """Knobs tuned on one slice raise attainment on another slice of the same workload.

    An overloaded a100+l4 pair (poisson at 20 req/s, ~50% attainment with the defaults), three
    independent traces, six trials each. Stated tolerance: the held-out gain averages at least
    5 points and no trace loses more than 2 (measured: +22.0, +21.5, +12.6 points).
    """
    gains = []
    for seed in (1, 2, 4):
        tr = scenario("poisson", n=800, seed=seed, rate=20.0)
        setup = TuneSetup(
            parse_cluster("a100:1,l4:1"),
            slice_trace(tr, 0, 400),
            slice_trace(tr, 400, 800),
            scales=(1.0,),
            engine_policy="vllm_default",
        )
        res = tune(setup, trials=6)
        assert res.trials == 6
        assert set(res.best_prism) >= {"tpot_margin", "slack", "order", "max_moves"}
        assert res.best_lens == {}  # vllm_default engines: nothing of LENS to tune
        # the held-out figures are what the knobs give when run again on the held-out slice
        assert res.eval_default == [run_once(setup, setup.eval, 1.0, {}, {})]
        assert res.eval_tuned == [run_once(setup, setup.eval, 1.0, res.best_prism, {})]
        gains.append(res.eval_tuned_mean - res.eval_default_mean)
    assert sum(gains) / len(gains) >= 0.05, gains
    assert min(gains) >= -0.02, gains


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
    assert "tpot_margin" in d["policy_args"]["prism"]
    if d["engine_policy"] == "lens":
        assert "bank_spend" in d["engine_policy_args"]["lens"]
    printed = capsys.readouterr().out
    assert "eval mean" in printed and "train attainment" in printed
    # the knob file reads back as eval's --policy-config, knob for knob
    knobs = load_knobs(out)
    assert knobs.policy_args["prism"] == d["policy_args"]["prism"]
    if not d["beats_defaults_on_train"]:
        assert "did not beat the defaults" in printed or "nothing to tune" in printed
    rc = main(
        ["eval", "--trace", "synthetic:poisson,n=120,rate=30,seed=2", "--cluster", "a100:1,l4:1",
         "--policies", "prism", "--engine-policy", d["engine_policy"], "--policy-config",
         str(out), "--out", str(tmp_path / "ev"), "--no-progress"]
    )  # fmt: skip
    assert rc == 0


def test_tune_cli_rejects_a_bad_slice(capsys):
    rc = main(["tune", "--train", "10:5"])
    assert rc == 2 and "START:STOP" in capsys.readouterr().err
