"""engine-sim as a real process, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from nexussched.perfmodel.telemetry import StepRecord

MODEL = "sim-llama-3-8b"
SCALE = 0.1


@pytest.fixture(scope="module")
def engine(spawn_module, tmp_path_factory):
    tele = tmp_path_factory.mktemp("tele") / "steps.jsonl"
    e = spawn_module(
        "engine-sim",
        "--time-scale",
        str(SCALE),
        "--eos-mean",
        "4",
        "--max-model-len",
        "4096",
        "--telemetry-out",
        str(tele),
        "--name",
        "sim-e",
    )
    e.telemetry_path = tele
    return e


@pytest.fixture(scope="module")
def client(engine):
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="none", max_retries=0, timeout=30)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def get(url: str) -> tuple[int, str, dict]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode(), dict(r.headers)


def test_completion_counts_token_ids_and_honours_max_tokens(client):
    r = client.completions.create(
        model=MODEL, prompt=list(range(100, 150)), max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert r.usage.prompt_tokens == 50
    assert r.usage.completion_tokens == 7
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].text.split()) == 7
    r = client.completions.create(
        model=MODEL, prompt="abcd" * 25, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert r.usage.prompt_tokens == 25  # 100 characters / 4


def test_eos_stops_early_unless_ignored(client):
    natural = [
        client.completions.create(model=MODEL, prompt="hi", max_tokens=40) for _ in range(12)
    ]
    stopped = [r for r in natural if r.choices[0].finish_reason == "stop"]
    assert stopped, "with --eos-mean 4 most requests should stop before 40 tokens"
    assert all(r.usage.completion_tokens < 40 for r in stopped)
    forced = client.completions.create(
        model=MODEL, prompt="hi", max_tokens=40, extra_body={"ignore_eos": True}
    )
    assert forced.usage.completion_tokens == 40
    assert forced.choices[0].finish_reason == "length"


def test_streaming_completion_and_chat(client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=[1, 2, 3],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 12 and all(texts)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 3

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=9,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices[0].delta.content]
    assert len(content) == 9
    assert chunks[-1].choices[0].finish_reason == "length"

    r = client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        messages=[{"role": "user", "content": "x" * 40}],
        extra_body={"ignore_eos": True},
    )
    assert r.usage.prompt_tokens == 10 + 4
    assert r.usage.completion_tokens == 5 and r.choices[0].message.content


def test_response_ids_are_unique_and_created_is_the_arrival_time(client):
    import re
    import time

    before = int(time.time())
    a = client.completions.create(model=MODEL, prompt="a", max_tokens=2)
    b = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "b"}], max_tokens=2
    )
    chunks = list(client.completions.create(model=MODEL, prompt="c", max_tokens=3, stream=True))
    after = int(time.time())
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", a.id) and re.fullmatch(r"chatcmpl-[0-9a-f]{32}", b.id)
    assert len({a.id, b.id[4:], chunks[0].id}) == 3  # request ids never repeat
    assert {c.id for c in chunks} == {chunks[0].id}  # one id across a stream's chunks
    for created in (a.created, b.created, chunks[0].created):
        assert before <= created <= after


def test_models_health_and_metrics_names(engine, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert get(engine.url + "/health")[0] == 200
    text = get(engine.url + "/metrics")[1]
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert name in text


async def test_disconnect_aborts_the_request(engine):
    before = get(engine.url + "/metrics")[1]
    aborts0 = metric(before, "vllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "prompt": [5] * 64,
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }
    async with aiohttp.ClientSession() as s:
        resp = await s.post(engine.url + "/v1/completions", json=body)
        seen = 0
        async for line in resp.content:
            if line.startswith(b"data:"):
                seen += 1
                if seen == 3:
                    break
        text = get(engine.url + "/metrics")[1]
        assert metric(text, "vllm:num_requests_running") == 1
        assert metric(text, "vllm:kv_cache_usage_perc") > 0
        resp.close()  # the client goes away mid-stream (3000 tokens take ~4 s at this scale)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            text = get(engine.url + "/metrics")[1]
            if (
                metric(text, "vllm:request_success_total", finished_reason="abort") > aborts0
                and metric(text, "vllm:num_requests_running") == 0
            ):
                break
            await asyncio.sleep(0.05)
    assert metric(text, "vllm:request_success_total", finished_reason="abort") == aborts0 + 1
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:kv_cache_usage_perc") == 0


def test_telemetry_stream_and_pacing(engine, client):
    _, _, h = get(engine.url + "/telemetry?since=0&limit=0")
    start = int(h["X-Telemetry-Total"])
    r = client.completions.create(
        model=MODEL, prompt=list(range(300)), max_tokens=30, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 30
    _, text, h = get(engine.url + f"/telemetry?since={start}")
    recs = [StepRecord.from_dict(json.loads(line)) for line in text.splitlines()]
    assert int(h["X-Telemetry-Next"]) == start + len(recs)
    # one prefill step makes the first token, then one decode step per further token
    assert len(recs) == 30
    assert sum(rec.prefill_tokens for rec in recs) == 300
    assert sum(rec.num_decodes for rec in recs) == 29
    assert all(rec.engine == "sim-e" and rec.duration > 0 for rec in recs)
    # paced: on the engine's clock (wall time / SCALE) the steps start in order and the last
    # starts only once all before it have taken their durations (an unpaced engine starts them
    # back to back). Slack: one event-loop timer tick (1 ms wall) of early wake-up.
    assert all(b.t > a.t for a, b in zip(recs, recs[1:], strict=False))
    busy = sum(rec.duration for rec in recs[:-1])
    assert recs[-1].t - recs[0].t >= busy - 1e-3 / SCALE
    assert busy > 10 * (1e-3 / SCALE)  # the slack is small next to what is checked
    # nothing new after the end
    _, text, _ = get(engine.url + f"/telemetry?since={start + len(recs)}")
    assert text == ""
    # the file gets the same records (flushed every 0.5 s)
    deadline = time.monotonic() + 3
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = Path(engine.telemetry_path).read_text().splitlines()
        if len(lines) >= start + len(recs):
            break
        time.sleep(0.1)
    assert len(lines) >= start + len(recs)
    assert StepRecord.from_dict(json.loads(lines[start])) == recs[0]


async def test_bad_input_gets_openai_errors(engine):
    cases = [
        (b"{not json", 400),
        (json.dumps({"prompt": "x"}).encode(), 400),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 0}).encode(), 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -1}).encode(), 400),
        (json.dumps({"model": MODEL, "prompt": [1] * 5000}).encode(), 400),
        (json.dumps({"model": MODEL, "prompt": "x", "n": 2}).encode(), 400),
        (json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(), 400),
        (json.dumps([1, 2]).encode(), 400),
    ]
    async with aiohttp.ClientSession() as s:
        for raw, status in cases:
            async with s.post(
                engine.url + "/v1/completions",
                data=raw,
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.status == status, raw
                err = (await r.json())["error"]
                assert err["message"] and "type" in err and "code" in err
        async with s.post(
            engine.url + "/v1/chat/completions", json={"model": MODEL, "messages": []}
        ) as r:
            assert r.status == 400


def test_openai_client_raises_on_bad_input(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)


def test_no_tracebacks_in_server_log(engine):
    assert "Traceback" not in engine.log_tail(100_000), engine.log_tail(5000)


def test_repeated_prompt_prefix_is_served_from_cache_and_counted(engine, client):
    before = get(engine.url + "/metrics")[1]
    q0 = metric(before, "vllm:prefix_cache_queries_total")
    h0 = metric(before, "vllm:prefix_cache_hits_total")
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    first = client.chat.completions.create(
        model=MODEL,
        messages=[system, {"role": "user", "content": "first question"}],
        max_tokens=2,
        extra_body={"ignore_eos": True},
    )
    second = client.chat.completions.create(
        model=MODEL,
        messages=[system, {"role": "user", "content": "another question"}],
        max_tokens=2,
        extra_body={"ignore_eos": True},
    )
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the shared system message (4 + 290 tokens) in whole 16-token blocks
    assert cached == (4 + 290) // 16 * 16
    after = get(engine.url + "/metrics")[1]
    assert metric(after, "vllm:prefix_cache_queries_total") - q0 == (
        first.usage.prompt_tokens + second.usage.prompt_tokens
    )
    assert metric(after, "vllm:prefix_cache_hits_total") - h0 == cached


def test_kv_events_name_the_prompt_blocks_as_the_router_hashes_them(engine, client):
    from nexussched.tokens import block_hashes, prompt_pieces

    start = int(get(engine.url + "/kv_events?limit=0")[2]["X-KV-Total"])
    prompt = [31000 + k for k in range(100)]  # 6 full 16-token blocks, new to this engine
    client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=2, extra_body={"ignore_eos": True}
    )
    _, text, headers = get(engine.url + f"/kv_events?since={start}")
    events = [json.loads(x) for x in text.splitlines()]
    stored = [h for ev in events if ev["type"] == "BlockStored" for h in ev["block_hashes"]]
    assert stored == list(block_hashes(prompt_pieces({"prompt": prompt}, False)))
    assert int(headers["X-KV-Next"]) == start + len(events)


def test_next_turn_of_a_chat_hits_on_the_previous_answer(engine, client):
    # vLLM caches full blocks of generated tokens too: the next turn, which carries the answer as
    # the assistant message, finds the first turn's prompt and answer in the cache
    from nexussched.tokens import text_pieces

    messages = [
        {"role": "system", "content": "You answer in full sentences. " * 20},
        {"role": "user", "content": "tell me a long story"},
    ]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=64, extra_body={"ignore_eos": True}
    )
    answer = first.choices[0].message.content
    p1, out = first.usage.prompt_tokens, first.usage.completion_tokens
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    second = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=2, extra_body={"ignore_eos": True}
    )
    # the blocks the first turn filled (its last output token's KV is never computed), up to the
    # end of the answer as the second prompt lays it out (a 4-token assistant header, its text)
    blocks = min((p1 + out - 1) // 16, (p1 + 4 + len(text_pieces(answer))) // 16)
    assert second.usage.prompt_tokens_details.cached_tokens == blocks * 16
    assert blocks * 16 > p1  # more than the first prompt: part of the answer was cached


async def test_router_telemetry_feed_reads_at_most_limit_records_per_poll_and_jumps_to_the_newest(
    engine, client
):
    """An engine that steps faster than the router's feed reads (or a long history on a first
    poll) is sampled: each poll takes at most `limit` records, then goes on from the newest."""
    from types import SimpleNamespace

    from nexussched.router.telemetry_feed import TelemetryFeed

    client.completions.create(
        model=MODEL, prompt=list(range(100)), max_tokens=60, extra_body={"ignore_eos": True}
    )
    _, _, h = get(engine.url + "/telemetry?since=0&limit=0")
    total = int(h["X-Telemetry-Total"])
    assert total >= 60
    seen: list[int] = []
    backend = SimpleNamespace(url=engine.url, healthy=True)
    async with aiohttp.ClientSession() as s:
        feed = TelemetryFeed(
            lambda i, rec: seen.append(rec.step), [backend], s, limit=16, learn_budget=0
        )
        assert await feed.poll_once() == 16  # the oldest kept ones
        assert feed.skipped == total - 32
        assert await feed.poll_once() == 16  # then the newest 16, nothing in between
        assert await feed.poll_once() == 0
    assert len(set(seen)) == 32  # none twice
    assert seen[16:] == sorted(seen[16:]) and seen[-1] == feed.last_step[0]
    assert seen[16] - seen[15] == total - 31  # the jump skipped exactly what `skipped` says
