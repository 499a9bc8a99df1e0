"""The router as a real process in front of engine-sim processes, driven by the openai client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import aiohttp
import openai
import pytest

from nexussched.localproc import free_ports

MODEL = "sim-llama-3-8b"
OTHER = "other-model"
KEY = "test-key"


@pytest.fixture(scope="module")
def cluster(spawn_module):
    *ports, rport = free_ports(4)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    # all four start at once; the router probes the engines in as they come up
    router = spawn_module(
        "router",
        *sum((["--backend", u] for u in urls), []),
        "--api-key",
        KEY,
        "--max-body-mb",
        "0.01",
        "--scrape-interval",
        "0.2",
        "--health-interval",
        "0.2",
        port=rport,
        wait=False,
    )
    engines = [
        spawn_module("engine-sim", "--time-scale", "0.1", port=ports[0], wait=False),
        spawn_module("engine-sim", "--time-scale", "0.1", port=ports[1], wait=False),
        spawn_module(
            "engine-sim", "--time-scale", "0.1", "--model", OTHER, port=ports[2], wait=False
        ),
    ]
    for p in (*engines, router):
        p.wait_ready()
    assert sum(b["healthy"] for b in wait_healthy(router.url, 3)) == 3
    return router, engines


def wait_healthy(url: str, n: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        bs = get_json(url + "/backends")["backends"]
        if sum(b["healthy"] for b in bs) == n or time.monotonic() > deadline:
            return bs
        time.sleep(0.05)


def _get(url: str, key: str | None = KEY) -> bytes:
    """GET with the router's API key (admin views and /metrics need it; engines ignore it)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return r.read()


def get_json(url: str, key: str | None = KEY) -> dict:
    return json.loads(_get(url, key))


def get_text(url: str, key: str | None = KEY) -> str:
    return _get(url, key).decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def sent(router_url: str) -> list[int]:
    return [b["sent"] for b in get_json(router_url + "/backends")["backends"]]


@pytest.fixture(scope="module")
def client(cluster):
    router, _ = cluster
    return openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def test_completions_and_chat_through_the_router(client):
    r = client.completions.create(
        model=MODEL, prompt=list(range(40)), max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (40, 6)
    chunks = [
        c
        for c in client.completions.create(model=MODEL, prompt="hello", max_tokens=8, stream=True)
        if c.choices
    ]
    assert len(chunks) == 8 and chunks[-1].choices[0].finish_reason == "length"
    r = client.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert r.usage.completion_tokens == 4 and r.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            max_tokens=5,
            stream=True,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50", "x-priority": "1"},
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5


def test_models_are_the_union_and_requests_go_where_the_model_is(cluster, client):
    router, _ = cluster
    assert sorted(m.id for m in client.models.list()) == sorted([MODEL, OTHER])
    before = sent(router.url)
    for _ in range(5):
        r = client.completions.create(model=OTHER, prompt="x", max_tokens=2)
        assert r.model == OTHER
    after = sent(router.url)
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 0, 5]


async def test_least_load_spreads_concurrent_streams(cluster):
    router, _ = cluster
    before = sent(router.url)
    c = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)

    async def one() -> int:
        s = await c.completions.create(
            model=MODEL,
            prompt="spread",
            max_tokens=60,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return sum([1 async for ch in s if ch.choices and ch.choices[0].text])

    counts = await asyncio.gather(*[one() for _ in range(12)])
    await c.close()
    assert counts == [60] * 12
    d = [a - b for a, b in zip(sent(router.url), before, strict=True)]
    assert d[2] == 0 and d[0] + d[1] == 12
    assert min(d[0], d[1]) >= 4, d  # least load balances the two engines serving MODEL


async def test_bad_input_is_a_4xx_with_openai_error_body(cluster):
    router, _ = cluster
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    ok = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    cases = [
        ("POST", "/v1/completions", b"{broken", auth, 400, "invalid_json"),
        ("POST", "/v1/completions", json.dumps({"prompt": "x"}).encode(), auth, 400, None),
        (
            "POST",
            "/v1/completions",
            json.dumps({**ok, "model": "nope"}).encode(),
            auth,
            404,
            "model_not_found",
        ),
        ("POST", "/v1/completions", json.dumps({**ok, "max_tokens": 0}).encode(), auth, 400, None),
        ("POST", "/v1/completions", json.dumps({**ok, "max_tokens": -5}).encode(), auth, 400, None),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL}).encode(), auth, 400, None),
        (
            "POST",
            "/v1/completions",
            json.dumps({**ok, "prompt": "y" * 20000}).encode(),
            auth,
            413,
            "request_too_large",
        ),
        (
            "POST",
            "/v1/completions",
            json.dumps(ok).encode(),
            {**auth, "x-slo-ttft-ms": "soon"},
            400,
            None,
        ),
        (
            "POST",
            "/v1/completions",
            json.dumps(ok).encode(),
            {"Content-Type": "application/json"},
            401,
            "invalid_api_key",
        ),
        (
            "POST",
            "/v1/completions",
            json.dumps(ok).encode(),
            {**auth, "Authorization": "Bearer wrong"},
            401,
            None,
        ),
        ("GET", "/v1/completions", b"", auth, 405, None),
        ("POST", "/v1/embeddings", json.dumps(ok).encode(), auth, 404, None),
    ]
    async with aiohttp.ClientSession() as s:
        for method, path, data, headers, status, code in cases:
            async with s.request(method, router.url + path, data=data, headers=headers) as r:
                body = await r.json(content_type=None)
                assert r.status == status, (path, data[:60], body)
                err = body["error"]
                assert isinstance(err["message"], str) and err["message"]
                assert "type" in err and "code" in err
                if code:
                    assert err["code"] == code

        # chunked upload past the limit (no Content-Length to check up front)
        async def gen():
            for _ in range(40):
                yield b" " * 1024

        async with s.post(router.url + "/v1/completions", data=gen(), headers=auth) as r:
            assert r.status == 413
        # a valid request still works afterwards
        async with s.post(router.url + "/v1/completions", json=ok, headers=auth) as r:
            assert r.status == 200


def test_openai_client_errors(cluster):
    router, _ = cluster
    c = openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="unknown", prompt="x")
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=MODEL, prompt="x", max_tokens=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router.url + "/v1", api_key="bad", max_retries=0).models.list()


def test_router_metrics(cluster, client):
    router, _ = cluster
    client.completions.create(model=MODEL, prompt="m", max_tokens=2)
    list(client.completions.create(model=MODEL, prompt="m", max_tokens=2, stream=True))
    text = get_text(router.url + "/metrics")
    assert metric(text, "nexussched_router_requests_total", status="200") >= 2
    assert metric(text, "nexussched_router_requests_total", backend="none", status="404") >= 0
    assert metric(text, "nexussched_router_routing_decision_seconds_count") >= 2
    assert metric(text, "nexussched_router_ttft_seconds_count") >= 1
    assert metric(text, "nexussched_router_e2e_seconds_count") >= 2
    assert metric(text, "nexussched_router_backend_healthy") == 3
    assert "nexussched_router_inflight_total" in text
    assert "nexussched_router_backend_num_running" in text
    h = get_json(router.url + "/health")
    assert h["healthy_backends"] == 3


async def test_scraped_engine_state_reaches_the_router(cluster):
    """While streams run, the router's view of the engines (EngineView) shows them."""
    router, _ = cluster
    c = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)

    async def one():
        s = await c.completions.create(
            model=MODEL,
            prompt="busy",
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return [ch async for ch in s]

    def idle() -> bool:
        bs = get_json(router.url + "/backends")["backends"]
        return not any(b["num_running"] or b["num_waiting"] or b["inflight"] for b in bs)

    async def wait_idle() -> bool:
        deadline = time.monotonic() + 5
        while not await asyncio.to_thread(idle):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    assert await wait_idle()
    tasks = [asyncio.ensure_future(one()) for _ in range(6)]
    seen_running = seen_inflight = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        bs = (await asyncio.to_thread(get_json, router.url + "/backends"))["backends"]
        seen_running = max(seen_running, sum(b["num_running"] for b in bs))
        seen_inflight = max(seen_inflight, sum(b["inflight"] for b in bs))
        if seen_running == 6 and seen_inflight == 6:
            break
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    await c.close()
    assert seen_inflight == 6
    assert seen_running == 6
    assert await wait_idle()  # and back to zero once they finish


async def test_client_disconnect_cancels_the_upstream_request(cluster):
    router, engines = cluster
    texts = [get_text(e.url + "/metrics") for e in engines]
    aborts0 = [metric(t, "vllm:request_success_total", finished_reason="abort") for t in texts]
    body = {
        "model": MODEL,
        "prompt": "long",
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            router.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        n = 0
        async for line in resp.content:
            if line.startswith(b"data:"):
                n += 1
                if n == 3:
                    break
        resp.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        texts = [get_text(e.url + "/metrics") for e in engines]
        aborts = [metric(t, "vllm:request_success_total", finished_reason="abort") for t in texts]
        if sum(aborts) > sum(aborts0) and not any(
            metric(t, "vllm:num_requests_running") for t in texts
        ):
            break
        await asyncio.sleep(0.05)
    assert sum(aborts) == sum(aborts0) + 1
    assert sum(metric(t, "vllm:num_requests_running") for t in texts) == 0


def test_no_tracebacks_in_server_logs(cluster):
    router, engines = cluster
    for p in (router, *engines):
        assert "Traceback" not in p.log_tail(100_000), p.log_tail(5000)


def test_port_in_use_is_a_one_line_error(capsys):
    from nexussched.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        for cmd in (["router", "--backend", "http://127.0.0.1:1"], ["engine-sim"]):
            assert main([*cmd, "--port", str(busy)]) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and "cannot listen" in lines[0] and str(busy) in lines[0]


def test_bad_configuration_is_a_one_line_error(tmp_path, capsys):
    from nexussched.cli import main

    bad = tmp_path / "backends.yaml"
    bad.write_text("backends:\n  - url: http://127.0.0.1:1\n  - url: gopher://x\n")
    cases = [
        (("--backends-file", str(bad)), f"{bad}, line 3"),
        (("--backends-file", str(tmp_path / "missing.yaml")), "not found"),
        (("--backend", "not-a-url"), "http://"),
        (("--backend", "http://127.0.0.1:1", "--policy", "nope"), "unknown routing policy"),
        (("--backend", "http://127.0.0.1:1", "--mode", "nope"), "unknown router mode"),
        (("--backend", "http://127.0.0.1:1", "--policy-arg", "x=1"), "bad --policy-arg"),
        (("--backend", "http://127.0.0.1:1", "--backend", "http://127.0.0.1:1/"), "twice"),
        ((), "no backends"),
    ]
    for args, needle in cases:
        assert main(["router", *args]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, lines)
