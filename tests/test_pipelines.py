"""README pipelines chain: eval's telemetry feeds perf fit, knob files and --policy-arg feed eval."""

from __future__ import annotations

import json

import pytest

from nexussched.cli import main
from nexussched.router.knobs import Knobs, load_knobs, parse_policy_args

TRACE = "synthetic:poisson,n=150,rate=25,seed=4"


def _eval(tmp_path, *extra: str) -> int:
    return main(["eval", "--trace", TRACE, "--cluster", "a100:1,l4:1", "--out",
                 str(tmp_path / "ev"), "--no-progress", *extra])  # fmt: skip


def test_telemetry_of_several_runs_is_one_tagged_file_perf_fit_reads(tmp_path, capsys):
    steps = tmp_path / "steps.jsonl"
    assert _eval(tmp_path, "--policies", "round_robin,least_load", "--telemetry-out",
                 str(steps)) == 0  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".jsonl"] == ["steps.jsonl"]
    runs = {json.loads(line)["run"] for line in steps.read_text().splitlines()}
    assert runs == {"round_robin+vllm_default@x1", "least_load+vllm_default@x1"}
    model = tmp_path / "m.json"
    rc = main(["perf", "fit", "--telemetry", str(steps), "--engine", "a100-0",
               "--run", "least_load+vllm_default@x1", "--out", str(model)])  # fmt: skip
    assert rc == 0 and model.exists()
    capsys.readouterr()
    rc = main(["perf", "score", "--model", str(model), "--telemetry", str(steps),
               "--run", "no_such_run"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "least_load+vllm_default@x1" in err and len(err.strip().splitlines()) == 1


def test_telemetry_of_one_run_goes_to_the_name_given_untagged(tmp_path):
    steps = tmp_path / "one.jsonl"
    assert _eval(tmp_path, "--policies", "round_robin", "--telemetry-out", str(steps)) == 0
    first = json.loads(steps.read_text().splitlines()[0])
    assert "run" not in first and first["engine"].startswith(("a100", "l4"))
    assert main(["perf", "fit", "--telemetry", str(steps), "--out", str(tmp_path / "m")]) == 0


def test_policy_arg_reaches_the_policy(tmp_path):
    def att(*extra: str) -> float:
        assert _eval(tmp_path, "--policies", "splitwise", *extra) == 0
        return json.loads((tmp_path / "ev" / "results.json").read_text())["runs"][0]

    a = att("--policy-arg", "splitwise.roles=P,D")
    b = att("--policy-arg", "splitwise.roles=D,P")
    # the slow l4 as the only decode node, or as the only prefill node: not the same run
    assert (a["slo_attainment"], a["ttft_p50"]) != (b["slo_attainment"], b["ttft_p50"])


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("prism.no_such_knob=1", "no_such_knob"),
        ("nopolicy.x=1", "neither a routing policy"),
        ("slack=0.4", "POLICY.KEY=VALUE"),
        ("lens.tpot_margin=abc", "lens"),
        ("prism.order=sideways", "order"),
    ],
)
def test_bad_policy_arg_is_a_one_line_error(tmp_path, capsys, arg, words):
    rc = _eval(tmp_path, "--policies", "prism", "--policy-arg", arg)
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1


def test_knob_file_round_trip_and_errors(tmp_path):
    k = parse_policy_args(["prism.slack=0.4", "lens.tpot_margin=0.1", "prism.order=lifo"])
    f = tmp_path / "k.json"
    f.write_text(json.dumps({**k.to_json(), "trials": 3}))
    back = load_knobs(f)
    assert back.policy_args == {"prism": {"slack": 0.4, "order": "lifo"}}
    assert back.engine_kwargs("lens")["config"].tpot_margin == 0.1
    over = back.merged(Knobs({"prism": {"slack": 0.9}}))
    assert over.policy_args["prism"] == {"slack": 0.9, "order": "lifo"}
    f.write_text('{"prism": {"slack": 1}}')
    with pytest.raises(ValueError, match="policy_args"):
        load_knobs(f)
    f.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_knobs(f)


def test_all_policies_means_every_policy_but_the_oracle_ablations():
    from nexussched.eval.cli_eval import _names
    from nexussched.router.policies import POLICIES

    names = _names("all", POLICIES, "routing policy")
    oracles = [n for n, f in POLICIES.items() if getattr(f, "oracle", False)]
    assert oracles and not set(oracles) & set(names)
    assert set(names) | set(oracles) == set(POLICIES)
