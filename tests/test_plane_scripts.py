"""Every Lua script of the plane terminates on its edge cases, against a real redis-server.

A script that loops forever takes Redis down for good (BUSY; SCRIPT KILL refuses a script that
wrote), so each call here is bounded by a client timeout and each test ends by checking that
Redis still answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from nexussched.plane import Chunk, Plane, RedisAddress, scripts

MAX_MOVE = getattr(scripts, "MAX_MOVE", 1000)  # (so that this file also runs on older code)

pytestmark = pytest.mark.timeout(60)
CALL_S = 5.0  # a script call that takes longer than this has not terminated


@pytest.fixture
async def plane(redis_proc):
    p = await Plane.open(RedisAddress(port=redis_proc.port), topic="s", timeout=CALL_S)
    try:
        yield p
        assert await asyncio.wait_for(p.client.ping(), CALL_S)  # Redis is not stuck in a script
    finally:
        await p.close()


async def bounded(coro):
    return await asyncio.wait_for(coro, CALL_S)


async def queue(plane: Plane, node: str, n: int, origin: str = "rep", ttl: float = 60) -> list:
    rids = [f"{node}-{i}" for i in range(n)]
    pipe_n = 0
    for rid in rids:
        pipe_n = await plane.queues.enqueue(node, 0, rid, "{}", origin, 0, ttl)
    assert pipe_n == n
    return rids


# ---- ADOPT -----------------------------------------------------------------------------------
async def test_adopt_of_own_queue_terminates_and_moves_nothing(plane):
    """The issue's repro: the caller's own keep-alive is gone while its queue holds work."""
    rids = await queue(plane, "me", 5)
    assert await plane.registry.owner("me") is None  # "dead" in the script's eyes
    assert await bounded(plane.leases.adopt("me", 0, "me", 0)) == 0
    assert await plane.client.lrange(plane.keys.queue("me"), 0, -1) == rids  # order kept


async def test_adopt_moves_a_long_queue_in_bounded_slices(plane):
    n = MAX_MOVE + 234
    pipe = plane.client.pipeline(transaction=False)
    for i in range(n):
        pipe.rpush(plane.keys.queue("dead"), f"d{i}")
    await pipe.execute()
    await plane.client.zadd(plane.keys.load(0), {"dead": n})
    assert await bounded(plane.leases.adopt("dead", 0, "me", 0)) == MAX_MOVE
    assert await plane.loads.scores() == {"dead": 234.0, "me": float(MAX_MOVE)}
    assert await bounded(plane.leases.adopt("dead", 0, "me", 0)) == 234
    assert await plane.loads.scores() == {"me": float(n)}  # the dead node left the table
    q = await plane.client.lrange(plane.keys.queue("me"), 0, -1)
    assert q == [f"d{i}" for i in range(n)]  # order kept across slices
    assert await bounded(plane.leases.adopt("dead", 0, "me", 0)) == 0  # nothing left


async def test_adopt_skips_a_live_node(plane):
    await queue(plane, "alive", 2)
    await plane.registry.own("alive", "r", 30)
    assert await bounded(plane.leases.adopt("alive", 0, "me", 0)) == 0
    assert await plane.queues.length("alive") == 2


# ---- CLAIM -----------------------------------------------------------------------------------
async def test_claim_with_a_huge_batch_takes_what_is_there(plane):
    rids = await queue(plane, "a", 3)
    got = await bounded(plane.queues.claim("a", 0, 10**9, "w", 5))
    assert [c.rid for c in got] == rids


async def test_claim_pops_at_most_max_move_entries_per_call(plane):
    """A queue full of dead entries (expired requests) costs several calls, not one long one."""
    n = MAX_MOVE + 10
    await queue(plane, "a", n, ttl=0.05)
    await asyncio.sleep(0.1)
    (live,) = [f"live-{i}" for i in range(1)]
    assert await plane.queues.enqueue("a", 0, live, "{}", "rep", 0, 60) == n + 1
    assert await bounded(plane.queues.claim("a", 0, 1, "w", 5)) == []
    assert await plane.queues.length("a") == 11  # MAX_MOVE popped, the rest waits
    got = await bounded(plane.queues.claim("a", 0, 1, "w", 5))
    assert [c.rid for c in got] == [live]
    assert (await plane.stats())["skipped"] == n


async def test_claim_drops_work_of_a_dead_origin(plane):
    await queue(plane, "a", 2, origin="gone")
    await queue(plane, "b", 1, origin="here")
    await plane.client.delete(plane.keys.replica("gone"))  # its keep-alive ran out
    assert await bounded(plane.queues.claim("a", 0, 5, "w", 5)) == []
    assert await plane.queues.states(["a-0", "a-1"]) == ["orphaned", "orphaned"]
    assert (await plane.stats())["orphaned"] == 2
    assert [c.rid for c in await plane.queues.claim("b", 0, 5, "w", 5)] == ["b-0"]


async def test_claim_never_steals_from_itself(plane):
    await queue(plane, "a", 1)
    got = await bounded(plane.queues.claim("b", 0, 0, "w", 5, victim="b", n_steal=10**6))
    assert got == []
    assert await plane.queues.length("a") == 1


# ---- ENQUEUE ---------------------------------------------------------------------------------
async def test_enqueue_again_continues_attempts_and_renews_the_origin(plane):
    (rid,) = await queue(plane, "a", 1)
    assert await plane.queues.enqueue("a", 0, rid, "{}", "rep", 0, 60) == 0  # live: duplicate
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    assert c.attempt == 1
    assert await plane.queues.cancel(rid) == "leased"
    # queued again by its origin, which says attempts up to 7 may exist somewhere
    assert await plane.queues.enqueue("a", 0, rid, "{}", "rep", 0, 60, attempt0=7) == 1
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    assert c.attempt == 8
    await plane.client.delete(plane.keys.replica("rep"))
    await plane.queues.enqueue("a", 0, "x", "{}", "rep", 0, 60, origin_keepalive_s=9)
    assert 8000 < await plane.client.pttl(plane.keys.replica("rep")) <= 9000


# ---- PUSH ------------------------------------------------------------------------------------
async def test_push_of_twenty_thousand_events_in_one_call(plane):
    await queue(plane, "a", 1)
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    chunks = [Chunk(c.rid, c.attempt, i, [f"e{i}"]) for i in range(20_000)]
    assert await bounded(plane.responses.push(c, "w", chunks, True, 5))
    got = await plane.responses.read("rep", 0, 25_000, 0.1)
    assert [ch.seq for ch in got] == list(range(20_000))


async def test_push_fences_other_attempts_and_a_retried_fin_passes(plane):
    await queue(plane, "a", 1)
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    wrong = type(c)(c.rid, c.attempt + 1, c.payload, c.origin, c.lane, c.home, False)
    assert not await plane.responses.push(wrong, "w", [Chunk(c.rid, 2, 0, ["x"])], False, 5)
    assert not await plane.responses.push(c, "other", [Chunk(c.rid, 1, 0, ["x"])], False, 5)
    assert await plane.responses.push(c, "w", [Chunk(c.rid, 1, 0, ["x"], fin=True)], True, 5)
    assert await plane.responses.fence(c, "w", True, 5)  # the fin again (a retry): still ok
    assert not await plane.responses.fence(c, "w", False, 5)  # but no more events after it
    assert await plane.queues.state(c.rid) == "done"


async def test_push_for_a_dead_origin_is_refused_and_its_list_deleted(plane):
    await queue(plane, "a", 1, origin="o")
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    assert await plane.responses.push(c, "w", [Chunk(c.rid, 1, 0, ["x"])], False, 5)
    assert await plane.client.llen(plane.keys.resp("o", 0)) == 1
    await plane.client.delete(plane.keys.replica("o"))
    assert not await plane.responses.push(c, "w", [Chunk(c.rid, 1, 1, ["y"])], False, 5)
    assert await plane.client.exists(plane.keys.resp("o", 0)) == 0
    assert await plane.queues.state(c.rid) == "orphaned" and await plane.leases.held() == 0


# ---- RENEW, UNCLAIM, REAP, CANCEL, HANDOFF ---------------------------------------------------
async def test_renew_and_unclaim_ignore_what_the_caller_does_not_hold(plane):
    await queue(plane, "a", 2)
    got = await plane.queues.claim("a", 0, 2, "w", 5)
    ghost = type(got[0])("nope", 1, "{}", "rep", 0, "a", False)
    assert await bounded(plane.leases.renew("w", [*got, ghost], 5)) == ["nope"]
    assert await bounded(plane.leases.renew("x", got, 5)) == [g.rid for g in got]
    assert await bounded(plane.queues.unclaim("x", got)) == 0
    assert await bounded(plane.queues.unclaim("w", [*got, ghost])) == 2
    assert await plane.queues.length("a") == 2


async def test_reap_caps_a_huge_limit(plane):
    await queue(plane, "a", 3)
    await plane.queues.claim("a", 0, 3, "w", 0.01)
    await asyncio.sleep(0.05)
    assert await bounded(plane.leases.reap(limit=10**9)) == 3
    assert await bounded(plane.leases.reap(limit=10**9)) == 0
    assert await bounded(plane.leases.reap(limit=0)) == 0


async def test_cancel_and_handoff_edge_cases(plane):
    assert await bounded(plane.queues.cancel("unknown")) == ""
    await queue(plane, "a", 1)
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    assert not await bounded(plane.queues.handoff(c, "other", "d", 0, "{}"))  # not its lease
    assert await bounded(plane.queues.handoff(c, "w", "d", 0, json.dumps({"k": 1})))
    assert not await bounded(plane.queues.handoff(c, "w", "d", 0, "{}"))  # lease gone now
    assert await plane.queues.cancel(c.rid) == "queued"
    assert await plane.queues.cancel(c.rid) == "expired"  # a second cancel changes nothing
    assert await plane.queues.length("d") == 0
