"""FastDeploy's scheduler modes in the live router: engine-sim backends, router replicas and a
real redis-server, all on 127.0.0.1. Every test counts lost requests (not answered completely)
and duplicated ones (the client saw more than it asked for) and asserts both are zero."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
from fastdeploy_harness import (
    Result,
    Tally,
    complete,
    dispatcher,
    engine,
    engine_finished,
    get_json,
    router,
    wait_until,
)

from nexussched.router.modes import SchedulerParams

pytestmark = pytest.mark.timeout(90)


def tally(results: list[Result], want: int) -> tuple[int, int]:
    """(lost, duplicated): answered incompletely or not at all / answered with extra events."""
    lost = sum(1 for r in results if r.status != 200 or not r.done or len(r.tokens) < want)
    dup = sum(1 for r in results if len(r.tokens) > want)
    return lost, dup


def params(redis_proc, name: str = "global", **kw) -> SchedulerParams:
    base = dict(
        name=name, port=redis_proc.port, topic="t", keepalive=1.5, lease=1.0, min_load_score=2
    )
    return SchedulerParams(**{**base, **kw}).validate()


# ---- local ------------------------------------------------------------------------------------
async def test_local_max_size_rejects_with_429_and_ttl_expires_with_504(hosts, session):
    e = await hosts(engine(max_num_seqs=1))
    r = await hosts(router([e.url], SchedulerParams(name="local", max_size=2, ttl=30)))
    res = await asyncio.gather(*(complete(session, r.url, 20) for _ in range(6)))
    rejected = [x for x in res if x.status == 429]
    assert rejected and all("scheduler_max_size=2" in x.body["error"]["message"] for x in rejected)
    assert all(x.body["error"]["type"] == "rate_limit_error" for x in rejected)
    ok = [x for x in res if x.status == 200]
    assert len(ok) + len(rejected) == 6 and tally(ok, 20) == (0, 0)

    e2 = await hosts(engine(max_num_seqs=1))
    r2 = await hosts(router([e2.url], SchedulerParams(name="local", ttl=0.6)))
    answered: list[int] = []  # statuses in the order the answers completed

    async def one() -> Result:
        x = await complete(session, r2.url, 40)
        answered.append(x.status)
        return x

    res = await asyncio.gather(*(one() for _ in range(10)))
    expired = [x for x in res if x.status == 504]
    assert expired and all("scheduler_ttl" in x.body["error"]["message"] for x in expired)
    ok = [x for x in res if x.status == 200]
    # every request answered (a client that gave up would show status 0), none lost
    assert len(ok) + len(expired) == 10 and tally(ok, 40) == (0, 0)
    # an error at the TTL, not at the request's turn: every expiry is answered while the queue
    # still has served requests to finish (one engine seat: they finish one after another)
    last_expiry = max(i for i, st in enumerate(answered) if st == 504)
    assert answered[:last_expiry].count(200) <= 1 < len(ok), answered
    # the expired requests never took the engine's time
    assert await engine_finished(session, e2.url) == len(ok)
    assert dispatcher(r2).policy.take_dropped() == []  # each drop was answered, none kept


async def test_local_policy_in_policy_mode_answers_what_it_drops(hosts, session):
    # the FastDeployLocal policy behind the default dispatcher (--policy local): a request its
    # queue expires ends with a 504 at once, not left waiting for a hand-over that never comes
    e = await hosts(engine(max_num_seqs=1))
    r = await hosts(router([e.url], None, policy="local", policy_args={"ttl": 0.6}))
    res = await asyncio.gather(*(complete(session, r.url, 40, timeout=20) for _ in range(8)))
    expired = [x for x in res if x.status == 504]
    ok = [x for x in res if x.status == 200]
    assert expired and all("scheduler_ttl" in x.body["error"]["message"] for x in expired)
    assert len(ok) + len(expired) == 8 and tally(ok, 40) == (0, 0)  # none hung (status 0)
    assert await engine_finished(session, e.url) == len(ok)


# ---- global: stealing ---------------------------------------------------------------------------
async def test_global_idle_node_steals_and_each_request_is_served_once(redis_proc, hosts, session):
    e1 = await hosts(engine(max_num_seqs=2))
    e2 = await hosts(engine(max_num_seqs=2))
    p = params(redis_proc)
    a = await hosts(router([e1.url], p))
    b = await hosts(router([e2.url], dataclasses.replace(p)))
    assert await wait_until(lambda: dispatcher(a).workers and dispatcher(b).workers)
    # skewed arrivals: every request reaches replica A, whose node queues them
    res = await asyncio.gather(*(complete(session, a.url, 25) for _ in range(16)))
    assert tally(res, 25) == (0, 0)
    view_a = await get_json(session, a.url + "/scheduler")
    view_b = await get_json(session, b.url + "/scheduler")
    assert view_b["local"]["stolen"] > 0  # the idle node took work from the busy one
    assert view_a["stats"]["enqueued"] == 16 == view_a["stats"]["done"]
    assert view_a["stats"]["claimed"] == 16  # no request claimed twice
    assert view_a["leases"] == 0 and all(n["queued"] == 0 for n in view_a["nodes"])
    assert view_a["local"]["duplicates_dropped"] == 0


async def test_kill_a_node_holding_stolen_work(redis_proc, hosts, session, spawn):
    e1 = await hosts(engine(max_num_seqs=1))
    e2 = await hosts(engine(max_num_seqs=4))
    p = params(redis_proc)
    a = await hosts(router([e1.url], p))
    # replica B drives engine 2 from another process, so it can really die
    b = await asyncio.to_thread(
        spawn,
        "router",
        "--backend",
        e2.url,
        "--scheduler-name",
        "global",
        "--scheduler-port",
        str(redis_proc.port),
        "--scheduler-topic",
        "t",
        "--scheduler-keepalive",
        "1.5",
        "--scheduler-lease",
        "1",
        "--scheduler-min-load_score",
        "2",
        "--scrape-interval",
        "0.05",
        "--health-interval",
        "0.1",
        wait=False,
    )
    await asyncio.to_thread(b.wait_ready)
    assert await wait_until(lambda: dispatcher(a).workers)
    assert await wait_until(lambda: _driving(session, b.url), timeout=20)
    tasks = [asyncio.create_task(complete(session, a.url, 60)) for _ in range(10)]

    async def b_holds() -> bool:
        v = await get_json(session, b.url + "/scheduler")
        return v["local"]["held"] > 0 and v["local"]["stolen"] > 0

    assert await wait_until(b_holds, timeout=15)
    b.kill()  # SIGKILL while it executes stolen requests
    res = await asyncio.gather(*tasks)
    t = Tally.of(res, 60)
    print(t.line("node-kill-stolen-10"))
    view = await get_json(session, a.url + "/scheduler")
    assert t.bad == (0, 0, 0, 0), (res, view)
    # streams B had started end with a clear error (one generation per answer); the rest of its
    # work came back when its leases ran out and was served
    assert t.served + t.failed == 10 and t.failed <= 4, res
    assert view["stats"].get("requeued", 0) > 0
    assert view["stats"]["done"] >= t.served and view["leases"] == 0


async def _driving(session, url: str) -> bool:
    try:
        v = await get_json(session, url + "/scheduler")
    except aiohttp.ClientError:
        return False
    return bool(v.get("local", {}).get("driving"))


# ---- faults of the plane itself -------------------------------------------------------------------
async def test_redis_killed_and_restarted(redis_proc, hosts, session):
    e = await hosts(engine(max_num_seqs=2))
    a = await hosts(router([e.url], params(redis_proc)))
    assert await wait_until(lambda: dispatcher(a).workers)
    tasks = [asyncio.create_task(complete(session, a.url, 40)) for _ in range(8)]
    await asyncio.sleep(0.4)
    redis_proc.kill()
    down = await complete(session, a.url, 5)
    assert down.status == 503
    msg = down.body["error"]["message"]
    assert "Redis" in msg and str(redis_proc.port) in msg and "\n" not in msg
    await asyncio.sleep(0.5)
    redis_proc.start()  # empty again: no persistence
    res = await asyncio.gather(*tasks)
    after = await complete(session, a.url, 5)
    assert after.status == 200 and after.done
    t = Tally.of(res, 40)
    print(t.line("redis-kill-restart-8"))
    assert t.bad == (0, 0, 0, 0), res
    # a stream that was running when Redis forgot it ends with a clear error (its run is gone;
    # another run would splice two generations); queued ones run again and are served
    assert t.served + t.failed == 8 and t.failed <= 2, res
    assert dispatcher(a).counters["requeued_after_loss"] > 0  # Redis forgot them; we did not


async def test_global_ttl_expiry_answers_an_error(redis_proc, hosts, session):
    e = await hosts(engine(max_num_seqs=1))
    a = await hosts(router([e.url], params(redis_proc, ttl=1.0)))
    assert await wait_until(lambda: dispatcher(a).workers)
    res = await asyncio.gather(*(complete(session, a.url, 30) for _ in range(8)))
    ok = [r for r in res if r.status == 200 and r.error is None]
    expired = [r for r in res if r not in ok]
    assert expired, res
    assert all(r.status in (200, 504) for r in res), res  # answered, not given up on (status 0)
    # an expired request still queued is answered without ever taking the engine's time; one a
    # worker had leased at its deadline (all eight share one) may have reached the engine
    # (FastDeploy's workers take more than the engine's one seat: they fill its own queue)
    n504 = sum(1 for r in res if r.status == 504)

    async def settled() -> dict:  # each expiry's cancel runs just after its 504 went out
        stats = (await get_json(session, a.url + "/scheduler"))["stats"]
        return stats if stats.get("expired", 0) + stats.get("skipped", 0) >= n504 else {}

    assert await wait_until(settled)
    stats = await settled()
    leased = stats.get("expired_leased", 0)
    assert await engine_finished(session, e.url) <= len(res) - n504 + leased
    for r in expired:
        text = r.body["error"]["message"] if r.body else r.error
        assert "scheduler_ttl" in text
    assert tally(ok, 30) == (0, 0)


async def test_topics_do_not_schedule_together(redis_proc, hosts, session):
    e1 = await hosts(engine(max_num_seqs=1))
    e2 = await hosts(engine(max_num_seqs=4))
    a = await hosts(router([e1.url], params(redis_proc, topic="red")))
    b = await hosts(router([e2.url], params(redis_proc, topic="blue")))
    assert await wait_until(lambda: dispatcher(a).workers and dispatcher(b).workers)
    res = await asyncio.gather(*(complete(session, a.url, 10) for _ in range(8)))
    assert tally(res, 10) == (0, 0)
    va = await get_json(session, a.url + "/scheduler")
    vb = await get_json(session, b.url + "/scheduler")
    assert [n["name"] for n in va["nodes"]] == [dispatcher(a).workers[0].name]
    assert [n["name"] for n in vb["nodes"]] == [dispatcher(b).workers[0].name]
    assert vb["local"]["stolen"] == 0 and "enqueued" not in vb["stats"]


# ---- several replicas, one view -----------------------------------------------------------------
async def test_three_replicas_four_engines_one_cluster_view(redis_proc, hosts, session):
    engines = [await hosts(engine(max_num_seqs=4)) for _ in range(4)]
    urls = [e.url for e in engines]
    p = params(redis_proc)
    reps = [await hosts(router(urls, dataclasses.replace(p))) for _ in range(3)]

    def owned() -> int:
        return sum(len(dispatcher(r).workers) for r in reps)

    assert await wait_until(lambda: owned() == 4, timeout=15)
    views = [await get_json(session, r.url + "/scheduler") for r in reps]
    strip = [sorted((n["name"], n["owner"], n["alive"]) for n in v["nodes"]) for v in views]
    assert strip[0] == strip[1] == strip[2] and len(strip[0]) == 4
    replicas = {dispatcher(r).replica for r in reps}
    assert all(v["replicas"] == sorted(replicas) for v in views)
    assert {owner for _, owner, _ in strip[0]} <= replicas  # each node driven by one live replica
    res = await asyncio.gather(*(complete(session, reps[i % 3].url, 20) for i in range(24)))
    assert tally(res, 20) == (0, 0)
    after = [await get_json(session, r.url + "/scheduler") for r in reps]
    assert all(v["stats"] == after[0]["stats"] for v in after)
    assert after[0]["stats"]["enqueued"] == 24 == after[0]["stats"]["done"]


# ---- splitwise ------------------------------------------------------------------------------------
async def test_splitwise_prefill_hands_off_to_decode_with_kv_transfer(redis_proc, hosts, session):
    engines = [await hosts(engine(max_num_seqs=8)) for _ in range(3)]
    p = params(redis_proc, name="splitwise", roles="P,D,D", sync_period=0.2)
    r = await hosts(router([e.url for e in engines], p))
    d = dispatcher(r)
    assert await wait_until(lambda: len(d.workers) == 3 and len(d.view) == 3)
    prompt = "word " * 800  # ~1000 tokens
    res = await asyncio.gather(*(complete(session, r.url, 16, prompt=prompt) for _ in range(8)))
    assert tally(res, 16) == (0, 0)
    assert d.counters["handoffs"] == 8
    servers = [e.app["engine_server"] for e in engines]
    # the prefill engine ran each prompt for one token; the decode engines computed no prompt
    # beyond its last position (the rest of the KV came from the prefill engine)
    pre = [c for rec in servers[0]._tele for c in rec.prefill_chunks]
    cached = sum(rec.cached_tokens for rec in servers[0]._tele)  # the prompts are the same
    assert sum(n for n, _ in pre) + cached >= 8 * 900
    dec = [c for s in servers[1:] for rec in s._tele for c in rec.prefill_chunks]
    assert len(dec) == 8 and all(n == 1 and ctx >= 900 for n, ctx in dec)
    assert servers[0].engine.num_running == 0
    view = await get_json(session, r.url + "/scheduler")
    assert sorted(n["role"] for n in view["nodes"]) == ["decode", "decode", "prefill"]
    assert view["stats"]["handoffs"] == 8 and view["stats"]["done"] == 8
