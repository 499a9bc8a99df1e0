"""Router parts that need no server: config files, settings, request parsing, metric scraping."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from nexussched.router.backends import Backend
from nexussched.router.config import (
    BackendSpec,
    RouterSettings,
    backend_from_url,
    load_backends_file,
    parse_kv,
)
from nexussched.router.errors import APIError
from nexussched.router.policies import EngineView, LeastLoad, RequestInfo
from nexussched.router.requests import (
    CHAT,
    COMPLETIONS,
    estimate_prompt_tokens,
    parse_slo,
    validate_body,
)
from nexussched.router.vllm_metrics import parse_vllm_metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_parse_vllm_metrics_sums_engines_and_averages_kv():
    m = parse_vllm_metrics(VLLM_METRICS)
    assert m is not None
    assert (m.num_running, m.num_waiting) == (5, 7)
    assert m.kv_usage == pytest.approx(0.375)


def test_parse_vllm_metrics_old_kv_name_and_non_vllm():
    m = parse_vllm_metrics("vllm:gpu_cache_usage_perc 0.8\nvllm:num_requests_running 1\n")
    assert m is not None and m.kv_usage == pytest.approx(0.8) and m.num_running == 1
    assert parse_vllm_metrics("process_cpu_seconds_total 3.0\n") is None


def test_backend_is_an_engine_view_for_policies():
    bs = [Backend(backend_from_url(f"http://127.0.0.1:{9000 + i}")) for i in range(3)]
    for b in bs:
        b.healthy = True
        assert isinstance(b, EngineView)
    bs[0].num_running, bs[1].inflight, bs[2].num_waiting = 4, 1, 2
    info = RequestInfo(1, 10, 10, 0.0, 1.0, 0.1)
    assert LeastLoad().route(info, bs, 0.0) == 1
    bs[1].healthy = False
    assert LeastLoad().route(info, bs, 0.0) == 2


def test_backend_urls_are_normalized_and_checked():
    assert backend_from_url("http://h:8000/v1/").url == "http://h:8000"
    assert backend_from_url("http://h:8000").name == "h:8000"
    for bad in ("ftp://h:1", "h:8000", "http://", "http://h:99999", ""):
        with pytest.raises(ValueError):
            backend_from_url(bad)


def test_backends_file_yaml_and_json(tmp_path):
    y = tmp_path / "b.yaml"
    y.write_text(
        "backends:\n  - url: http://127.0.0.1:9001\n    name: a\n  - http://127.0.0.1:9002/v1\n"
    )
    specs = load_backends_file(y)
    assert [s.url for s in specs] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert specs[0].name == "a"
    j = tmp_path / "b.json"
    j.write_text(json.dumps([{"url": "http://127.0.0.1:9003", "models": ["m"]}]))
    assert load_backends_file(j)[0].models == ("m",)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("backends:\n  - url: http://a:1\n  - url: ftp://b:2\n", "line 3"),
        ("backends:\n  - name: x\n", "missing 'url'"),
        ("backends:\n  - url: http://a:1\n    colour: red\n", "unknown key"),
        ("backends: [\n", "line"),
        ("[]\n", "non-empty"),
    ],
)
def test_bad_backends_file_names_file_and_line(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError) as ei:
        load_backends_file(f)
    msg = str(ei.value)
    assert str(f) in msg and needle in msg and "\n" not in msg


def test_bad_json_file_gives_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  "http://a:1",\n  oops\n]')
    with pytest.raises(ValueError, match=r"bad\.json, line 3"):
        load_backends_file(f)


def test_settings_validation():
    b = [BackendSpec("http://a:1", "a")]
    RouterSettings(backends=b).validate()
    with pytest.raises(ValueError, match="no backends"):
        RouterSettings(backends=[]).validate()
    with pytest.raises(ValueError, match="twice"):
        RouterSettings(backends=b + b).validate()
    with pytest.raises(ValueError, match="request-timeout"):
        RouterSettings(backends=b, request_timeout=0).validate()
    assert parse_kv(["a=1", "b=x", "c=[1,2]"], "x") == {"a": 1, "b": "x", "c": [1, 2]}
    with pytest.raises(ValueError):
        parse_kv(["novalue"], "--policy-arg")


def test_validate_body_accepts_and_rejects():
    assert validate_body(COMPLETIONS, {"model": "m", "prompt": "hi", "max_tokens": 5}) == (
        "m",
        False,
        5,
    )
    assert validate_body(
        CHAT,
        {
            "model": "m",
            "stream": True,
            "max_completion_tokens": 3,
            "messages": [{"role": "user", "content": "x"}],
        },
    ) == ("m", True, 3)
    bad = [
        (COMPLETIONS, []),
        (COMPLETIONS, {"prompt": "x"}),
        (COMPLETIONS, {"model": "", "prompt": "x"}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": 0}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": -3}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": "5"}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": True}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "stream": "yes"}),
        (COMPLETIONS, {"model": "m"}),
        (COMPLETIONS, {"model": "m", "prompt": {"a": 1}}),
        (CHAT, {"model": "m"}),
        (CHAT, {"model": "m", "messages": []}),
        (CHAT, {"model": "m", "messages": [{"content": "no role"}]}),
    ]
    for path, body in bad:
        with pytest.raises(APIError) as ei:
            validate_body(path, body)
        assert ei.value.status == 400
        err = ei.value.body()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"


def test_slo_from_headers_and_body():
    h = CIMultiDict({"X-SLO-TTFT-MS": "250", "x-slo-tpot-ms": "40", "x-priority": "2"})
    assert parse_slo(h, {}, 1.0, 0.1) == (0.25, 0.04, 2)
    # body fields are seconds and win over headers
    assert parse_slo(h, {"slo_ttft": 0.5, "priority": 7}, 1.0, 0.1) == (0.5, 0.04, 7)
    assert parse_slo(CIMultiDict(), {}, 1.0, 0.1) == (1.0, 0.1, 0)
    for hh, body in (
        (CIMultiDict({"x-slo-ttft-ms": "fast"}), {}),
        (CIMultiDict({"x-slo-tpot-ms": "-1"}), {}),
        (CIMultiDict(), {"slo_tpot": "x"}),
        (CIMultiDict({"x-priority": "high"}), {}),
    ):
        with pytest.raises(APIError) as ei:
            parse_slo(hh, body, 1.0, 0.1)
        assert ei.value.status == 400


def test_prompt_token_estimate():
    assert estimate_prompt_tokens(COMPLETIONS, {"prompt": list(range(37))}) == 37
    assert estimate_prompt_tokens(COMPLETIONS, {"prompt": "x" * 400}) == 100
    chat = {
        "messages": [
            {"role": "user", "content": "y" * 40},
            {"role": "user", "content": [{"type": "text", "text": "z" * 8}]},
        ]
    }
    assert estimate_prompt_tokens(CHAT, chat) == 10 + 4 + 2 + 4


def test_stated_slos_are_forwarded_in_vllm_xargs_for_the_engine_plugin():
    import json

    from nexussched.router.requests import with_slo_xargs
    from nexussched.sim.server_requests import slo_hints as _slo

    body = {"model": "m", "prompt": "x", "vllm_xargs": {"other": 1, "slo_tpot": 0.02}}
    fwd = json.loads(with_slo_xargs(body, 0.5, 0.05, 2))
    # a value the client already put in vllm_xargs wins; the rest is filled in
    assert fwd["vllm_xargs"] == {"other": 1, "slo_tpot": 0.02, "slo_ttft": 0.5, "priority": 2}
    # the engine reads them back from vllm_xargs when the top level has none
    assert _slo({}, {"model": "m", "vllm_xargs": fwd["vllm_xargs"]}, 2.0, 0.1) == (0.5, 0.02, 2)
    assert _slo({}, {"model": "m"}, 2.0, 0.1) == (2.0, 0.1, 0)


def test_router_histograms_and_counts_render_as_prometheus_would():
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from nexussched.router.prom import RouterMetrics

    b = SimpleNamespace(name="e0", healthy=True, inflight=0, num_running=0, num_waiting=0,
                        kv_usage=0.0)  # fmt: skip
    m = RouterMetrics(lambda: [b])
    for v in (0.001, 0.0011, 1.0, 100.0):  # on a bound counts in it (le), past the last: +Inf
        m.observe_e2e("e0", v)
    for status in (200, 200, 502):
        m.count("e0", status)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    e2e = {s.labels.get("le"): s.value for s in fams["nexussched_router_e2e_seconds"].samples
           if s.name.endswith("_bucket")}  # fmt: skip
    assert (e2e["0.001"], e2e["0.0025"], e2e["0.5"], e2e["1.0"], e2e["80.0"], e2e["+Inf"]) == (
        1, 2, 2, 3, 3, 4,
    )  # fmt: skip
    total = [s for s in fams["nexussched_router_e2e_seconds"].samples if s.name.endswith("_sum")]
    assert total[0].value == pytest.approx(101.0021)
    req = {(s.labels["backend"], s.labels["status"]): s.value
           for s in fams["nexussched_router_requests"].samples}  # fmt: skip
    assert req == {("e0", "200"): 2, ("e0", "502"): 1} and m.answered("e0", 200) == 2
