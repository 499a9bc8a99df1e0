"""Behaviour of nexussched.traces: loaders, errors, synthetic workloads, transforms, stats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from nexussched.traces import (
    KNOWN_TRACES,
    LengthDist,
    Trace,
    TraceError,
    TraceRequest,
    describe,
    gamma_arrivals,
    head,
    load_azure2023,
    load_burstgpt,
    load_mooncake,
    load_trace,
    poisson_arrivals,
    scale_rate,
    scenario,
    slice_trace,
    synthetic_trace,
    time_window,
    with_slo,
)
from nexussched.traces.loaders import PACKAGED_TRACES_DIR, known_trace_file

# The copies shipped in the package: every test below runs with or without ../shared beside it.
PACKAGED = PACKAGED_TRACES_DIR


def _arrivals(trace: Trace) -> np.ndarray:
    return np.array([r.arrival for r in trace.requests])


def _check_shape(trace: Trace) -> None:
    a = _arrivals(trace)
    assert a[0] == 0.0
    assert np.all(np.diff(a) >= 0)
    assert [r.id for r in trace.requests] == list(range(len(trace)))
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in trace.requests)


# ---------------------------------------------------------------------------- public traces


@pytest.mark.parametrize(
    ("name", "rows", "prompt_mean", "output_mean"),
    [
        ("azure-code", 8819, 2048, 28),
        ("azure-conv", 19366, 1155, 211),
        ("mooncake-conv", 12031, 12035, 343),
    ],
)
def test_public_traces_load_with_documented_shape(name, rows, prompt_mean, output_mean):
    trace = load_trace(name, traces_dir=PACKAGED)
    assert trace.name == name
    assert len(trace) == rows
    _check_shape(trace)
    stats = describe(trace)
    assert stats["count"] == rows
    assert stats["prompt_mean"] == pytest.approx(prompt_mean, rel=0.02)
    assert stats["output_mean"] == pytest.approx(output_mean, rel=0.02)
    # Each public trace covers roughly an hour.
    assert 3000 < stats["duration_s"] < 4000


def test_default_traces_dir_is_found_from_env(monkeypatch):
    monkeypatch.setenv("NEXUSSCHED_TRACES_DIR", str(PACKAGED))
    assert len(load_trace("azure-code")) == 8819


def _tiny_azure(path: Path, rows: int) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:15:{i:02d}.0000000,{100 + i},{10 + i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_lookup_order_flag_then_env_then_shared_then_package(tmp_path, monkeypatch):
    flag, env, root = tmp_path / "flag", tmp_path / "env", tmp_path / "work"
    for d in (flag, env, root / "shared" / "traces", root / "proj"):
        d.mkdir(parents=True)
    _tiny_azure(flag / "azure2023_conv.csv", 3)
    _tiny_azure(env / "azure2023_conv.csv", 4)
    _tiny_azure(root / "shared" / "traces" / "azure2023_conv.csv", 5)
    monkeypatch.chdir(root / "proj")
    monkeypatch.setenv("NEXUSSCHED_TRACES_DIR", str(env))
    assert len(load_trace("azure-conv", traces_dir=flag)) == 3
    assert len(load_trace("azure-conv")) == 4
    monkeypatch.delenv("NEXUSSCHED_TRACES_DIR")
    assert len(load_trace("azure-conv")) == 5
    # a shared/traces without this trace falls through to the packaged copy
    assert known_trace_file("azure-code").parent == PACKAGED
    assert len(load_trace("azure-code")) == 8819
    # a directory the user named must hold the trace: no silent fallback
    with pytest.raises(FileNotFoundError, match="--traces-dir"):
        load_trace("azure-code", traces_dir=flag)


def test_compressed_trace_files_are_read(tmp_path):
    import gzip
    import lzma

    _tiny_azure(tmp_path / "a.csv", 6)
    raw = (tmp_path / "a.csv").read_bytes()
    (tmp_path / "b.csv.xz").write_bytes(lzma.compress(raw))
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(raw))
    plain = [(r.arrival, r.prompt_tokens) for r in load_trace(str(tmp_path / "a.csv")).requests]
    for f in ("b.csv.xz", "c.csv.gz"):
        assert [
            (r.arrival, r.prompt_tokens) for r in load_trace(str(tmp_path / f)).requests
        ] == plain


def test_bundled_is_the_head_of_the_packaged_azure_conv():
    b, full = load_trace("bundled"), load_trace("azure-conv", traces_dir=PACKAGED)
    assert len(b) == 3000 and b.name.startswith("bundled")
    assert [r.prompt_tokens for r in b.requests] == [r.prompt_tokens for r in full.requests[:3000]]


def test_packaged_traces_are_small_and_carry_their_licences():
    files = {p.name: p.stat().st_size for p in PACKAGED.iterdir()}
    for name in KNOWN_TRACES.values():
        assert name + ".xz" in files
    assert sum(files.values()) < 2_000_000
    notes = (PACKAGED / "README.md").read_text()
    assert "CC-BY 4.0" in notes and "Apache-2.0" in notes and "Splitwise" in notes
    assert "Mooncake" in notes


def test_mooncake_keeps_prefix_hashes_and_path_detection():
    trace = load_trace(str(PACKAGED / "mooncake_conversation.jsonl.xz"))
    assert trace.requests[0].prefix_hashes[:3] == (0, 1, 2)
    # Each hash block covers 512 tokens, so the block count bounds the prompt.
    r = trace.requests[1]
    assert (len(r.prefix_hashes) - 1) * 512 < r.prompt_tokens <= len(r.prefix_hashes) * 512


def test_azure_timestamps_keep_seven_digit_precision():
    trace = load_trace(str(PACKAGED / "azure2023_code.csv.xz"))
    # Rows 1 and 2: 18:17:03.9799600 and 18:17:04.0319600.
    assert trace.requests[1].arrival == pytest.approx(0.052, abs=1e-9)


def test_unknown_trace_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as err:
        load_trace("azure-nope", traces_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    for name in KNOWN_TRACES:
        assert name in msg


def test_known_name_with_missing_dir_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"azure2023_conv.csv.* in {tmp_path}"):
        load_trace("azure-conv", traces_dir=tmp_path)


# ---------------------------------------------------------------------------- other formats


def test_azure2024_style_timestamps(tmp_path):
    f = tmp_path / "azure2024.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:01.5+00:00,100,10\n"
        "2024-05-10 00:00:00.009930+00:00,200,0\n"
        "2024-05-10T02:00:02+02:00,0,5\n"
    )
    trace = load_trace(str(f))
    _check_shape(trace)
    assert _arrivals(trace) == pytest.approx([0.0, 1.49007, 1.99007])
    # Sorted by arrival; 0 output and 0 prompt are clamped to 1.
    assert [(r.prompt_tokens, r.output_tokens) for r in trace.requests] == [
        (200, 1),
        (100, 10),
        (1, 5),
    ]


def test_burstgpt_skips_failed_requests_and_counts_them(tmp_path):
    f = tmp_path / "burst.csv"
    f.write_text(
        "Timestamp, Session ID, Elapsed time, Model, Request tokens, Response tokens,"
        " Total tokens, Log Type\n"
        "5.0, s1, 1.2, ChatGPT, 300, 40, 340, Conversation log\n"
        "7.5, s2, 0.5, GPT-4, 120, 0, 120, Conversation log\n"
        "6.0, s3, 2.0, GPT-4, 0, 80, 80, API log\n"
    )
    trace = load_trace(str(f))
    assert len(trace) == 2
    assert trace.meta["skipped_failed"] == 1
    _check_shape(trace)
    assert _arrivals(trace) == pytest.approx([0.0, 1.0])
    assert [r.prompt_tokens for r in trace.requests] == [300, 1]
    assert len(load_burstgpt(f)) == 2


def test_mooncake_loader_on_temp_file(tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [
        {"timestamp": 1500, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 500, "input_length": 10, "output_length": 0, "hash_ids": [0]},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    trace = load_mooncake(f)
    _check_shape(trace)
    assert _arrivals(trace) == pytest.approx([0.0, 1.0])
    assert trace.requests[0].prefix_hashes == (0,)
    assert trace.requests[0].output_tokens == 1


# ---------------------------------------------------------------------------- malformed files

AZ_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_ROW = "2023-11-16 18:17:03.9799600,4808,10\n"


@pytest.mark.parametrize(
    ("name", "content", "line", "field"),
    [
        (
            "bad_count.csv",
            AZ_HEADER + AZ_ROW * 15 + "2023-11-16 18:17:05.1,abc,3\n",
            17,
            "ContextTokens",
        ),
        (
            "negative.csv",
            AZ_HEADER + AZ_ROW + "2023-11-16 18:17:05.1,12,-3\n",
            3,
            "GeneratedTokens",
        ),
        ("bad_time.csv", AZ_HEADER + AZ_ROW * 3 + "yesterday,12,3\n", 5, "TIMESTAMP"),
        (
            "missing_col.csv",
            "TIMESTAMP,ContextTokens\n" + "2023-11-16 18:17:05.1,12\n",
            1,
            "GeneratedTokens",
        ),
        ("short_row.csv", AZ_HEADER + AZ_ROW + "2023-11-16 18:17:05.1,12\n", 3, "GeneratedTokens"),
        ("empty.csv", "", 1, "header"),
    ],
)
def test_malformed_azure_raises_one_line_error(tmp_path, name, content, line, field):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(TraceError) as err:
        load_azure2023(f)
    e = err.value
    msg = str(e)
    assert "\n" not in msg
    assert str(f) in msg
    assert f"line {line}," in msg
    assert f"field '{field}'" in msg
    assert (e.line, e.field) == (line, field)


def test_error_message_format_and_pickling(tmp_path):
    f = tmp_path / "y.csv"
    f.write_text(AZ_HEADER + AZ_ROW * 15 + "2023-11-16 18:17:05.1,abc,3\n")
    with pytest.raises(TraceError) as err:
        load_trace(str(f))
    assert str(err.value) == (
        f"bad trace file {f}, line 17, field 'ContextTokens': "
        "expected a non-negative integer, got 'abc'"
    )
    assert isinstance(err.value, ValueError)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


@pytest.mark.parametrize(
    ("lines", "line", "field"),
    [
        (['{"timestamp": 0, "input_length": 5, "output_length": 2}', "{not json"], 2, None),
        (['{"timestamp": 0, "output_length": 2}'], 1, "input_length"),
        (['{"timestamp": 0, "input_length": "5", "output_length": 2}'], 1, "input_length"),
        (['{"timestamp": -4, "input_length": 5, "output_length": 2}'], 1, "timestamp"),
        (
            ["", '{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": "x"}'],
            2,
            "hash_ids",
        ),
        ([], 1, None),
    ],
)
def test_malformed_mooncake_raises_one_line_error(tmp_path, lines, line, field):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines))
    with pytest.raises(TraceError) as err:
        load_trace(str(f))
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and f"line {line}" in msg
    assert err.value.field == field
    if field:
        assert f"field '{field}'" in msg


def test_malformed_burstgpt_names_field(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("Timestamp,Request tokens,Response tokens\n1.0,5,5\nsoon,5,5\n")
    with pytest.raises(TraceError, match=r"line 3, field 'Timestamp'"):
        load_trace(str(f))


def test_unrecognised_csv_header(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match=r"line 1.*unrecognised"):
        load_trace(str(f))


# ---------------------------------------------------------------------------- synthetic


def _gap_cv(a: np.ndarray) -> float:
    g = np.diff(a)
    return float(g.std() / g.mean())


def test_arrival_processes_have_their_cv_and_rate():
    rng = np.random.default_rng(1)
    p = poisson_arrivals(10.0, 20000, rng)
    g = gamma_arrivals(10.0, 4.0, 20000, rng)
    assert p[0] == 0.0 and g[0] == 0.0
    assert _gap_cv(p) == pytest.approx(1.0, abs=0.1)
    assert _gap_cv(g) > 2.0
    assert len(p) / p[-1] == pytest.approx(10.0, rel=0.05)
    assert len(g) / g[-1] == pytest.approx(10.0, rel=0.25)


def test_scenarios_shapes():
    bursty = describe(scenario("bursty", n=5000, seed=2))
    poisson = describe(scenario("poisson", n=5000, seed=2))
    assert bursty["interarrival_cv"] > 2.0
    assert poisson["interarrival_cv"] == pytest.approx(1.0, abs=0.15)
    assert poisson["prompt_mean"] == pytest.approx(1100, rel=0.1)
    assert poisson["output_mean"] == pytest.approx(200, rel=0.1)
    long_ctx = scenario("long-context", n=3000, seed=2)
    assert describe(long_ctx)["prompt_mean"] == pytest.approx(8000, rel=0.1)
    assert min(r.prompt_tokens for r in long_ctx.requests) >= 1000
    assert max(r.prompt_tokens for r in long_ctx.requests) <= 32000
    het = scenario("heterogeneous", n=5000, seed=2)
    long_gen = sum(r.output_tokens > 700 and r.prompt_tokens < 1500 for r in het.requests)
    long_doc = sum(r.prompt_tokens >= 2500 for r in het.requests)
    assert 0.05 < long_gen / 5000 < 0.15
    assert 0.12 < long_doc / 5000 < 0.28


def test_seeds_are_deterministic():
    a = scenario("heterogeneous", n=300, seed=7)
    b = scenario("heterogeneous", n=300, seed=7)
    c = scenario("heterogeneous", n=300, seed=8)
    assert a.requests == b.requests
    assert a.requests != c.requests
    _check_shape(a)


def test_length_dist_bounds_and_kinds():
    rng = np.random.default_rng(0)
    fixed = LengthDist("fixed", 128).sample(10, rng)
    assert fixed.tolist() == [128] * 10
    u = LengthDist("uniform", 100, 0.5, 1, 1000).sample(5000, rng)
    assert u.mean() == pytest.approx(100, rel=0.05) and u.min() >= 1
    ln = LengthDist("lognormal", 1000, 2.0, 10, 2000).sample(5000, rng)
    assert ln.min() >= 10 and ln.max() <= 2000
    with pytest.raises(ValueError):
        LengthDist("zipf", 100)


def test_synthetic_trace_fixed_lengths():
    t = synthetic_trace(
        "gamma",
        rate=5.0,
        n=50,
        cv=2.0,
        prompt=LengthDist("fixed", 64),
        output=LengthDist("fixed", 8),
    )
    assert len(t) == 50
    assert {(r.prompt_tokens, r.output_tokens) for r in t.requests} == {(64, 8)}


def test_synthetic_spec_parsing():
    t = load_trace("synthetic:bursty,n=2000,rate=20,seed=3")
    assert len(t) == 2000
    assert t.name == "synthetic:bursty,n=2000,rate=20,seed=3"
    assert t.requests == scenario("bursty", n=2000, rate=20.0, seed=3).requests
    p = describe(load_trace("synthetic:poisson,rate=10,n=3000,prompt=1000,output=200,seed=1"))
    assert p["count"] == 3000
    assert p["prompt_mean"] == pytest.approx(1000, rel=0.1)
    assert p["rate_rps"] == pytest.approx(10, rel=0.1)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("synthetic:bursty,foo=3", "'foo'"),
        ("synthetic:bursty,n=abc", "'n'"),
        ("synthetic:bursty,rate=-1", "'rate'"),
        ("synthetic:bursty,n", "key=value"),
        ("synthetic:nope", "'nope'"),
    ],
)
def test_synthetic_spec_errors_name_the_key(spec, needle):
    with pytest.raises(ValueError) as err:
        load_trace(spec)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


# ---------------------------------------------------------------------------- transforms


def _toy() -> Trace:
    return Trace(
        "toy",
        [
            TraceRequest(10 + i, float(2 * i), 100 + i, 10, slo_ttft=None if i else 0.5)
            for i in range(6)
        ],
    )


def test_scale_rate_halves_duration():
    t = scenario("poisson", n=500, seed=4)
    fast = scale_rate(t, 2.0)
    assert fast.duration == pytest.approx(t.duration / 2)
    assert fast.rate == pytest.approx(t.rate * 2)
    assert [r.prompt_tokens for r in fast.requests] == [r.prompt_tokens for r in t.requests]
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            scale_rate(t, bad)


def test_head_slice_window_keep_original_untouched():
    t = _toy()
    h = head(t, 3)
    assert [r.arrival for r in h.requests] == [0.0, 2.0, 4.0]
    s = slice_trace(t, 2, 5)
    assert [r.id for r in s.requests] == [0, 1, 2]
    assert [r.arrival for r in s.requests] == [0.0, 2.0, 4.0]
    assert [r.prompt_tokens for r in s.requests] == [102, 103, 104]
    w = time_window(t, 3.0, 8.0)
    assert [r.arrival for r in w.requests] == [1.0, 3.0]
    assert len(slice_trace(t, 10, 20)) == 0
    assert t.requests[0].id == 10 and t.requests[2].arrival == 4.0


def test_with_slo_fills_only_missing():
    t = with_slo(_toy(), ttft=2.0, tpot=0.1)
    assert t.requests[0].slo_ttft == 0.5
    assert all(r.slo_ttft == 2.0 for r in t.requests[1:])
    assert all(r.slo_tpot == 0.1 for r in t.requests)


def test_describe_empty_and_small():
    d = describe(Trace("empty", []))
    assert d["count"] == 0 and d["rate_rps"] == 0.0
    d = describe(_toy())
    assert d["count"] == 6 and d["duration_s"] == 10.0
    assert d["rate_rps"] == pytest.approx(0.5)
    assert d["interarrival_cv"] == 0.0
