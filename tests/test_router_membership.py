"""Live membership and breaking: the admin API and the watched backends file (backends join and
leave without a restart, a leaving one drains), the per-backend circuit breaker, retries with
backoff, the access log and request ids. Real aiohttp servers (engine-sim and a programmable fake
backend) and routers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re

import pytest
from fake_backend import FakeBackend
from fastdeploy_harness import (
    MODEL,
    complete,
    dispatcher,
    engine,
    engine_finished,
    router,
    wait_until,
)
from multidict import CIMultiDict

from nexussched.router.breaker import Breaker, backoff_delay
from nexussched.router.config import RouterSettings, backend_from_url
from nexussched.router.modes import SchedulerParams

pytestmark = pytest.mark.timeout(120)
KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def backends(session, url: str) -> list[dict]:
    async with session.get(url + "/backends", headers=AUTH) as r:
        assert r.status == 200
        return (await r.json())["backends"]


async def by_name(session, url: str) -> dict[str, dict]:
    return {b["name"]: b for b in await backends(session, url)}


async def post(
    session, url: str, headers: dict | None = None, **body
) -> tuple[int, dict, CIMultiDict]:
    payload = {"model": MODEL, "prompt": "hello", "max_tokens": 3, **body}
    async with session.post(
        url + "/v1/completions", json=payload, headers={**AUTH, **(headers or {})}
    ) as r:
        return r.status, await r.json(content_type=None), CIMultiDict(r.headers)


def name_of(url: str) -> str:
    return f"e{url.rsplit(':', 1)[1]}"  # the harness names backends e<port>


# ---- the admin API ---------------------------------------------------------------------------
async def test_admin_api_adds_a_backend_and_a_removed_one_drains(hosts, session):
    a = await hosts(engine(max_num_seqs=4))
    b = await hosts(engine(max_num_seqs=4))
    r = await hosts(router([a.url], None, api_key=KEY, policy="round_robin"))
    na = name_of(a.url)

    async with session.get(r.url + "/backends") as resp:  # admin views need the key
        assert resp.status == 401
    async with session.post(r.url + "/backends", json={"url": b.url}) as resp:
        assert resp.status == 401
    assert [x["name"] for x in await backends(session, r.url)] == [na]

    async with session.post(
        r.url + "/backends", json={"url": b.url, "name": "b"}, headers=AUTH
    ) as x:
        assert x.status == 201 and (await x.json())["backend"]["name"] == "b"
    assert await wait_until(
        lambda: by_name(session, r.url), timeout=0.1
    )  # the view answers while it joins
    assert await wait_until(_all_healthy(session, r.url, 2))
    res = [await post(session, r.url) for _ in range(6)]
    assert all(st == 200 for st, _, _ in res)
    sent = {k: v["sent"] for k, v in (await by_name(session, r.url)).items()}
    assert sent == {na: 3, "b": 3}  # round robin over both: the new one takes its share

    # bad admin input: clear 4xx
    for body, status in (
        ({"url": b.url}, 409),  # already present
        ({"url": "gopher://x"}, 400),
        ({"nope": 1}, 400),
    ):
        async with session.post(r.url + "/backends", json=body, headers=AUTH) as x:
            assert x.status == status, body
            assert "error" in await x.json()
    async with session.delete(r.url + "/backends/nosuch", headers=AUTH) as x:
        assert x.status == 404

    # a long stream on `a`, then `a` leaves: the stream finishes whole, nothing new goes there
    long = asyncio.ensure_future(complete(session, r.url, 80, timeout=60, headers=AUTH))
    assert await wait_until(lambda: _inflight(session, r.url, na))
    async with session.delete(r.url + f"/backends/{na}", headers=AUTH) as x:
        assert x.status == 202 and (await x.json())["backend"]["state"] == "draining"
    more = [await post(session, r.url) for _ in range(4)]
    assert all(st == 200 for st, _, _ in more)
    view = await by_name(session, r.url)
    assert view[na]["state"] == "draining" and view[na]["sent"] == 4  # 3 + the long one
    assert view["b"]["sent"] == 3 + 4
    done = await long
    assert done.status == 200 and done.done and len(done.tokens) == 80 and done.error is None
    assert await wait_until(lambda: _gone(session, r.url, na))

    # it may come back (same URL): in rotation again, its counts kept
    async with session.post(
        r.url + "/backends", json={"url": a.url, "name": na}, headers=AUTH
    ) as x:
        assert x.status == 201
    assert await wait_until(_all_healthy(session, r.url, 2))
    res = [await post(session, r.url) for _ in range(4)]
    view = await by_name(session, r.url)
    assert view[na]["sent"] == 4 + 2 and view["b"]["sent"] == 7 + 2


def _all_healthy(session, url: str, n: int):
    async def check() -> bool:
        bs = await backends(session, url)
        return len(bs) == n and all(b["healthy"] for b in bs)

    return check


async def _inflight(session, url: str, name: str) -> bool:
    return (await by_name(session, url))[name]["inflight"] > 0


async def _waiting(session, url: str, name: str) -> bool:
    return (await by_name(session, url))[name]["num_waiting"] > 0


async def _gone(session, url: str, name: str) -> bool:
    return name not in await by_name(session, url)


async def test_local_mode_backends_join_and_a_leaving_nodes_queue_goes_to_the_others(
    hosts, session
):
    a = await hosts(engine(max_num_seqs=1))
    b = await hosts(engine(max_num_seqs=8))
    r = await hosts(router([a.url], SchedulerParams(name="local", ttl=20), api_key=KEY))
    na = name_of(a.url)
    async with session.post(
        r.url + "/backends", json={"url": b.url, "name": "b"}, headers=AUTH
    ) as x:
        assert x.status == 201
    assert await wait_until(_all_healthy(session, r.url, 2))
    res = [await post(session, r.url) for _ in range(4)]
    assert all(st == 200 for st, _, _ in res)
    sent = {k: v["sent"] for k, v in (await by_name(session, r.url)).items()}
    assert sent == {na: 2, "b": 2}  # the front's round robin takes the new node in

    # `a` (one seat) runs a long stream and the front's next short request for `a` waits in
    # a's engine behind it; the front's next two for `a` then wait in its queue at the router.
    # Then `a` leaves: what its engine holds finishes there, and its queue goes to `b` (else
    # those two would wait for the TTL and get 504).
    def short():
        return asyncio.ensure_future(complete(session, r.url, 5, timeout=60, headers=AUTH))

    long = asyncio.ensure_future(complete(session, r.url, 300, timeout=60, headers=AUTH))
    assert await wait_until(lambda: _inflight(session, r.url, na))
    shorts = [short(), short()]  # the front: b, then a
    assert await wait_until(lambda: _waiting(session, r.url, na))
    shorts += [short() for _ in range(4)]  # b, a, b, a
    queue_a = dispatcher(r).policy.queues[0]
    assert await wait_until(lambda: len(queue_a) == 2)
    async with session.delete(r.url + f"/backends/{na}", headers=AUTH) as x:
        assert x.status == 202
    done = await asyncio.gather(long, *shorts)
    assert [x.status for x in done] == [200] * 7
    assert all(x.done and x.error is None for x in done)
    assert len(done[0].tokens) == 300 and not queue_a
    # each request served once: on `a` the long one and the short its engine held; on `b` the
    # rest, its queue's two included
    on_a, on_b = [await engine_finished(session, e.url) for e in (a, b)]
    assert (on_a, on_b) == (2 + 2, 2 + 5)
    assert await wait_until(lambda: _gone(session, r.url, na))  # drained, then gone


async def test_global_mode_backends_join_and_leave_through_the_plane(redis_proc, hosts, session):
    a = await hosts(engine(max_num_seqs=4))
    b = await hosts(engine(max_num_seqs=4))
    p = SchedulerParams(name="global", port=redis_proc.port, topic="m", keepalive=1.5, lease=1.0)
    r = await hosts(router([a.url], p.validate(), api_key=KEY))
    na = name_of(a.url)
    d = dispatcher(r)
    assert await wait_until(lambda: len(d.workers) == 1)
    async with session.post(
        r.url + "/backends", json={"url": b.url, "name": "b"}, headers=AUTH
    ) as x:
        assert x.status == 201
    assert await wait_until(lambda: len(d.workers) == 2)  # the replica drives the new node
    res = await asyncio.gather(*(complete(session, r.url, 5, headers=AUTH) for _ in range(8)))
    assert [x.status for x in res] == [200] * 8
    assert await engine_finished(session, b.url) > 0  # the new node serves its share

    base_a = await engine_finished(session, a.url)
    long = asyncio.ensure_future(complete(session, r.url, 80, timeout=60, headers=AUTH))
    assert await wait_until(lambda: _busy(session, r.url))
    on_a = (await by_name(session, r.url))[na]["inflight"] > 0
    async with session.delete(r.url + f"/backends/{na}", headers=AUTH) as x:
        assert x.status == 202
    assert await wait_until(lambda: len(d.workers) == 1)  # this replica no longer drives it
    res = await asyncio.gather(*(complete(session, r.url, 5, headers=AUTH) for _ in range(6)))
    assert [x.status for x in res] == [200] * 6
    done = await long
    assert done.status == 200 and done.done and len(done.tokens) == 80  # drained whole
    # nothing new went to `a` after it left (the long stream, if there, finished there)
    assert await engine_finished(session, a.url) == base_a + (1 if on_a else 0)
    async with session.get(r.url + "/scheduler", headers=AUTH) as x:
        assert (await x.json())["local"]["driving"] == ["b"]


async def _busy(session, url: str) -> bool:
    return any(b["inflight"] > 0 for b in await backends(session, url))


async def test_splitwise_mode_a_joining_backend_takes_a_role_and_a_decode_node_leaves(
    redis_proc, hosts, session
):
    a, b, c = [await hosts(engine(max_num_seqs=8)) for _ in range(3)]
    p = SchedulerParams(
        name="splitwise", port=redis_proc.port, topic="s", keepalive=1.5, lease=1.0,
        sync_period=0.2,
    )  # fmt: skip
    r = await hosts(router([a.url, b.url], p.validate(), api_key=KEY))  # P, D
    d = dispatcher(r)
    async with session.post(
        r.url + "/backends", json={"url": c.url, "name": "c"}, headers=AUTH
    ) as x:
        assert x.status == 201
    assert await wait_until(lambda: len(d.workers) == 3 and sum(n.alive for n in d.view) == 3)
    roles = {n.url: n.role for n in d.view}
    assert roles == {a.url: "prefill", b.url: "decode", c.url: "decode"}  # a tie: decode

    # the decode node b leaves: the prefill node hands every request to c
    async with session.delete(r.url + f"/backends/{name_of(b.url)}", headers=AUTH) as x:
        assert x.status == 202
    assert await wait_until(lambda: len(d.workers) == 2)
    assert await wait_until(lambda: not any(n.alive and n.url == b.url for n in d.view))
    on_b, on_c = [await engine_finished(session, e.url) for e in (b, c)]
    res = await asyncio.gather(*(complete(session, r.url, 8, headers=AUTH) for _ in range(6)))
    assert [x.status for x in res] == [200] * 6 and all(len(x.tokens) == 8 for x in res)
    assert await engine_finished(session, b.url) == on_b
    assert await engine_finished(session, c.url) == on_c + 6
    assert d.counters["handoffs"] == 6


# ---- the watched backends file ---------------------------------------------------------------
async def test_backends_file_changes_are_applied_without_a_restart(hosts, session, tmp_path):
    a = await hosts(engine())
    b = await hosts(engine())
    f = tmp_path / "backends.yaml"
    f.write_text(f"backends:\n  - url: {a.url}\n    name: a\n")
    r = await hosts(
        router(
            [a.url], None, api_key=KEY, backends_file=str(f), backends_file_poll=0.05,
            policy="round_robin",
        )
    )  # fmt: skip
    # the router was started with `a` under the harness's name; the file names it `a`:
    # the watcher manages the file's own entries from the first change on
    f.write_text(f"backends:\n  - url: {a.url}\n    name: a\n  - url: {b.url}\n    name: b\n")
    assert await wait_until(lambda: _has(session, r.url, "b"))
    assert await wait_until(_healthy_named(session, r.url, "b"))
    st, _, _ = await post(session, r.url)
    assert st == 200

    # `b` leaves the file: it drains and goes; a broken file changes nothing
    f.write_text(f"backends:\n  - url: {a.url}\n    name: a\n")
    assert await wait_until(lambda: _gone(session, r.url, "b"))
    watcher = r.app["router"].watcher
    applied = watcher.applied
    f.write_text("backends:\n  - url: gopher://nope\n")
    assert await wait_until(lambda: watcher.errors == 1)
    assert watcher.applied == applied
    names = {x["name"] for x in await backends(session, r.url)}
    assert names and "b" not in names
    res = [await post(session, r.url) for _ in range(3)]
    assert all(st == 200 for st, _, _ in res)


async def _has(session, url: str, name: str) -> bool:
    return name in await by_name(session, url)


def _healthy_named(session, url: str, name: str):
    async def check() -> bool:
        v = await by_name(session, url)
        return name in v and v[name]["healthy"]

    return check


def test_backends_file_setting_is_checked():
    with pytest.raises(ValueError, match="backends-file-poll"):
        RouterSettings([backend_from_url("http://127.0.0.1:1")], backends_file_poll=0).validate()
    with pytest.raises(ValueError, match="breaker-failures"):
        RouterSettings([backend_from_url("http://127.0.0.1:1")], breaker_failures=-1).validate()


# ---- the circuit breaker ---------------------------------------------------------------------
def test_breaker_state_machine():
    br = Breaker(threshold=3, cooldown=10.0)
    assert [br.failure(0.0) for _ in range(3)] == [False, False, True]
    assert br.state == "open" and br.blocks
    assert not br.cooled(5.0) and br.state == "open"
    assert br.cooled(10.0) and br.state == "half_open" and not br.blocks
    br.trial = True
    assert br.blocks  # one trial at a time
    assert br.failure(11.0) and br.state == "open" and br.opens == 2  # a failed trial reopens
    assert br.cooled(21.0)
    assert br.success() and br.state == "closed" and br.failures == 0
    br.failure(30.0)
    br.success()  # an answer resets the count of consecutive failures
    assert [br.failure(31.0) for _ in range(3)] == [False, False, True]
    off = Breaker(threshold=0)
    assert not any(off.failure(0.0) for _ in range(100)) and off.state == "closed"


async def test_5xx_opens_the_breaker_and_a_half_open_trial_closes_it(hosts, session):
    bad = await FakeBackend(status=500).start()
    good = await FakeBackend().start()
    try:
        r = await hosts(
            router(
                [bad.url, good.url], None, api_key=KEY, policy="round_robin", retries=0,
                breaker_failures=3, breaker_cooldown=2.0,
            )
        )  # fmt: skip
        assert await wait_until(_all_healthy(session, r.url, 2))
        nb = name_of(bad.url)
        statuses = [(await post(session, r.url))[0] for _ in range(12)]
        # round robin sends every other request to `bad` until 3 consecutive 500s open it (the
        # cooldown outlasts these 12 requests even on a loaded machine, so no trial falls among them)
        assert bad.hits == 3 and statuses.count(500) == 3 and statuses.count(200) == 9
        view = (await by_name(session, r.url))[nb]
        assert view["circuit"] in ("open", "half_open") and view["circuit_opens"] == 1
        assert "circuit" in view["down_reason"]

        # still failing when its trial comes: open again (one trial request, not a flood)
        async def trial_done() -> bool:
            await post(session, r.url)
            return bad.hits == 4

        assert await wait_until(trial_done)
        view = (await by_name(session, r.url))[nb]
        assert view["circuit_opens"] == 2 and not view["healthy"]

        bad.status = 200  # repaired: the next trial closes the breaker
        assert await wait_until(trial_done_at(session, r.url, bad, 5))
        view = (await by_name(session, r.url))[nb]
        assert view["circuit"] == "closed" and view["healthy"]
        before = bad.hits
        res = [(await post(session, r.url))[0] for _ in range(4)]
        assert res == [200] * 4 and bad.hits == before + 2  # back in the rotation
    finally:
        await bad.stop()
        await good.stop()


def trial_done_at(session, url: str, fake: FakeBackend, hits: int):
    async def check() -> bool:
        await post(session, url)
        return fake.hits >= hits

    return check


async def test_client_errors_never_open_the_breaker(hosts, session):
    fake = await FakeBackend(status=400).start()
    try:
        r = await hosts(router([fake.url], None, api_key=KEY, breaker_failures=2, retries=0))
        assert await wait_until(_all_healthy(session, r.url, 1))
        statuses = [(await post(session, r.url))[0] for _ in range(8)]
        assert statuses == [400] * 8 and fake.hits == 8
        view = (await backends(session, r.url))[0]
        assert view["circuit"] == "closed" and view["circuit_opens"] == 0 and view["healthy"]
    finally:
        await fake.stop()


# ---- retries ---------------------------------------------------------------------------------
def test_backoff_is_capped_exponential_with_jitter():
    rng = random.Random(1)
    for attempt in range(1, 12):
        full = min(1.0, 0.02 * 2 ** (attempt - 1))
        ds = [backoff_delay(attempt, 0.02, 1.0, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in ds)
        assert max(ds) - min(ds) > full / 4  # jittered, not one fixed delay
    assert backoff_delay(0, 0.02, 1.0, rng) == 0.0 and backoff_delay(3, 0.0, 1.0, rng) == 0.0


async def test_a_5xx_before_the_first_byte_is_retried_elsewhere(hosts, session):
    bad = await FakeBackend(status=503).start()
    good = await FakeBackend().start()
    try:
        r = await hosts(
            router(
                [bad.url, good.url], None, api_key=KEY, policy="round_robin", retries=1,
                breaker_failures=0,
            )
        )  # fmt: skip
        assert await wait_until(_all_healthy(session, r.url, 2))
        res = [await post(session, r.url) for _ in range(8)]
        assert [st for st, _, _ in res] == [200] * 8
        # every request round robin put on `bad` was re-sent to `good`
        assert bad.hits >= 4 and good.hits == 8
        retries = r.app["router"].metrics.retries._value.get()
        assert retries == bad.hits

        r0 = await hosts(router([bad.url], None, api_key=KEY, retries=0, breaker_failures=0))
        assert await wait_until(_all_healthy(session, r0.url, 1))
        st, body, _ = await post(session, r0.url)
        assert st == 503 and body["error"]["message"] == "fake answers 503"  # relayed as is
    finally:
        await bad.stop()
        await good.stop()


# ---- access log and request ids --------------------------------------------------------------
LINE = re.compile(
    r"rid=(?P<rid>\S+) model=(?P<model>\S+) backend=(?P<backend>\S+) status=(?P<status>\d+) "
    r"ttft_ms=(?P<ttft>\S+) e2e_ms=(?P<e2e>\S+) tokens=(?P<tokens>\S+) stream=(?P<stream>[01])"
)


async def test_access_log_line_per_request_and_request_ids_end_to_end(hosts, session, caplog):
    fake = await FakeBackend(tokens=5).start()
    e = await hosts(engine())
    try:
        r = await hosts(router([fake.url, e.url], None, api_key=KEY, policy="round_robin"))
        assert await wait_until(_all_healthy(session, r.url, 2))
        caplog.set_level(logging.INFO, logger="nexussched.access")
        caplog.clear()
        # the client's id goes to the engine and comes back
        st, body, h = await post(session, r.url, headers={"x-request-id": "client-42"})
        assert st == 200 and h["x-request-id"] == "client-42"
        assert fake.headers[-1]["x-request-id"] == "client-42"
        # none given: one is made, sent to the engine and returned
        st, _, h = await post(session, r.url)  # round robin: engine-sim this time
        made = h["x-request-id"]
        assert st == 200 and re.fullmatch(r"[0-9a-f]{32}", made)
        st, _, h = await post(session, r.url)  # the fake again
        assert fake.headers[-1]["x-request-id"] == h["x-request-id"] != made
        # errors carry it too; an unusable one is refused
        st, _, h = await post(session, r.url, max_tokens=0, headers={"x-request-id": "bad-1"})
        assert st == 400 and h["x-request-id"] == "bad-1"
        st, body, _ = await post(session, r.url, headers={"x-request-id": "x" * 500})
        assert st == 400 and "x-request-id" in body["error"]["message"]
        stream = await complete(session, r.url, 7, headers=AUTH)
        assert stream.status == 200 and len(stream.tokens) == 7

        lines = [m.groupdict() for rec in caplog.records if (m := LINE.search(rec.getMessage()))]
        assert len(lines) == 6 == len(caplog.records)
        first, second, third, bad, long_id, streamed = lines
        assert first["rid"] == "client-42" and first["backend"] == name_of(fake.url)
        assert first["model"] == MODEL and first["status"] == "200" and first["tokens"] == "5"
        assert float(first["e2e"]) >= float(first["ttft"]) > 0
        assert second["rid"] == made and second["backend"] == name_of(e.url)
        assert second["tokens"] == "3"  # engine-sim's usage
        assert bad["status"] == "400" and bad["backend"] == "-" and bad["rid"] == "bad-1"
        assert long_id["status"] == "400"
        assert streamed["stream"] == "1" and streamed["tokens"] == "7"
        assert 0 < float(streamed["ttft"]) <= float(streamed["e2e"])

        # --no-access-log
        r2 = await hosts(router([fake.url], None, api_key=KEY, access_log=False))
        assert await wait_until(_all_healthy(session, r2.url, 1))
        caplog.clear()
        assert (await post(session, r2.url))[0] == 200
        assert not [rec for rec in caplog.records if rec.name == "nexussched.access"]
    finally:
        await fake.stop()


async def test_an_engine_that_compresses_is_read_and_relayed_in_plain_form(hosts, session):
    # the router relays bodies as they come (no decompression): it must not invite compression,
    # neither of answers nor of scraped metrics
    fake = await FakeBackend(tokens=4, compress=True).start()
    try:
        r = await hosts(router([fake.url], None, api_key=KEY))
        assert await wait_until(_all_healthy(session, r.url, 1))
        st, body, h = await post(session, r.url)
        assert st == 200 and body["usage"]["completion_tokens"] == 4
        assert fake.headers[-1]["Accept-Encoding"] == "identity"

        async def scraped() -> bool:  # its /metrics (compressed when asked) is read too
            (b,) = await backends(session, r.url)
            return b["healthy"] and (b["num_running"], b["num_waiting"]) == (3, 1)

        assert await wait_until(scraped)
    finally:
        await fake.stop()


def test_access_log_fields_are_one_safe_line():
    from nexussched.router.access_log import access_line, token_events, usage_tokens

    line = access_line("a b\nc", "m\nx" * 100, "e1", 200, 0.01, 0.5, 4, True)
    assert "\n" not in line and line.startswith('rid="a b\\nc"')
    assert len(line) < 400
    assert usage_tokens(b'data: {"usage": {"completion_tokens": 12}}\n\ndata: [DONE]') == 12
    assert usage_tokens(json.dumps({"choices": []}).encode()) is None
    assert token_events(b"data: {}\n\ndata: {}\n\ndata: [DONE]\n\n") == 2


async def test_with_several_workers_the_admin_api_defers_to_the_backends_file(hosts, session):
    a = await hosts(engine())
    r = await hosts(router([a.url], None, api_key=KEY, workers=2))  # settings only: no fork here
    body = {"url": "http://127.0.0.1:9"}
    async with session.post(r.url + "/backends", json=body, headers=AUTH) as x:
        assert x.status == 409 and "--backends-file" in (await x.json())["error"]["message"]
    assert len(await backends(session, r.url)) == 1
