"""Failover with real processes: kill an engine mid-run, keep serving, take it back on restart."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from nexussched.localproc import free_ports

MODEL = "sim-llama-3-8b"
TOKENS = 400


def backends(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/backends", timeout=5) as r:
        return json.loads(r.read())["backends"]


async def wait_for(pred, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
def cluster(spawn):
    *ports, rport = free_ports(4)
    router = spawn(
        "router",
        *sum((["--backend", f"http://127.0.0.1:{p}"] for p in ports), []),
        "--policy",
        "round_robin",
        "--health-interval",
        "0.2",
        "--scrape-interval",
        "0.2",
        port=rport,
        wait=False,
    )
    # 0.5 s of wall per simulated second: a 400-token request takes 2-3 s, even on a loaded
    # machine (engine-sim keeps its own clock, so a starved engine no longer runs slower), long
    # enough for 15 streams to start before the kill
    engines = [spawn("engine-sim", "--time-scale", "0.5", port=p, wait=False) for p in ports]
    for p in (*engines, router):
        p.wait_ready()
    return router, engines


async def test_kill_a_backend_mid_run_then_restart_it(cluster):
    router, engines = cluster
    assert await wait_for(lambda: all(b["healthy"] for b in backends(router.url)))
    c = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=30)

    async def nonstream() -> tuple[str, int]:
        try:
            r = await c.completions.create(
                model=MODEL, prompt="work", max_tokens=TOKENS, extra_body={"ignore_eos": True}
            )
            return "ok", r.usage.completion_tokens
        except openai.APIError as e:
            return f"error {type(e).__name__}", 0

    started: list[int] = []

    async def stream() -> tuple[str, int]:
        n = 0
        try:
            s = await c.completions.create(
                model=MODEL,
                prompt="work",
                max_tokens=TOKENS,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            async for ch in s:
                if ch.choices and ch.choices[0].text:
                    n += 1
                    if n == 1:
                        started.append(1)
            return "ok", n
        except openai.APIError as e:
            return f"error {type(e).__name__}", n

    jobs = [asyncio.ensure_future(stream() if i % 2 else nonstream()) for i in range(30)]
    # kill once every stream is under way (~1 s of generation each)
    deadline = time.monotonic() + 10
    while len(started) < 15 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    victim = engines[1]
    victim.kill()  # SIGKILL mid-run: ~10 requests were on it
    results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=30)
    # nothing lost silently: each request completed in full or raised an error
    for kind, n in results:
        assert (kind == "ok" and n == TOKENS) or kind.startswith("error"), (kind, n)
    # non-streaming requests had no byte yet: they were retried on a survivor and completed
    assert all(r == ("ok", TOKENS) for r in results[0::2])
    # streams on the victim had started: those end with an error, the others complete
    errors = [r for r in results[1::2] if r[0] != "ok"]
    assert 1 <= len(errors) <= 10
    assert all(0 < n < TOKENS for _, n in errors)

    # out of rotation at once; new requests go to the survivors
    state = backends(router.url)
    assert not state[1]["healthy"]
    sent_before = state[1]["sent"]
    more = await asyncio.gather(*[nonstream() for _ in range(9)])
    assert all(r == ("ok", TOKENS) for r in more)
    assert backends(router.url)[1]["sent"] == sent_before

    # restart on the same port: the probe brings it back, and it gets work again
    victim.start()
    assert await wait_for(lambda: backends(router.url)[1]["healthy"], timeout=15)
    for _ in range(6):
        r = await c.completions.create(model=MODEL, prompt="again", max_tokens=3)
        assert r.usage.completion_tokens == 3
    assert backends(router.url)[1]["sent"] >= sent_before + 2

    # every backend gone: a clear 503, not a hang
    for e in engines:
        e.kill()
    with pytest.raises(openai.APIStatusError) as ei:
        await c.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert ei.value.status_code == 503
    assert "no backend" in ei.value.message
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(router.url + "/health", timeout=5)
    assert he.value.code == 503
    await c.close()
    assert "Traceback" not in router.log_tail(100_000), router.log_tail(5000)
