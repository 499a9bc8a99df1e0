"""The Redis state plane against a real redis-server: atomicity of enqueue/claim/steal, leases,
fencing, expiry, registry and topic isolation."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from nexussched.plane import (
    Chunk,
    NodeInfo,
    Plane,
    PlaneUnavailable,
    RedisAddress,
    crc16,
    shard_of,
)


@pytest.fixture
async def plane(redis_proc):
    p = await Plane.open(RedisAddress(port=redis_proc.port), topic="t1", shards=1)
    try:
        yield p
    finally:
        await p.close()


async def _queue(
    plane: Plane, node: str, n: int, origin: str = "rep", ttl: float = 60.0, start: int = 0
) -> list[str]:
    rids = [f"{node}-r{i}" for i in range(start, start + n)]
    for rid in rids:
        assert await plane.queues.enqueue(node, 0, rid, json.dumps({"id": rid}), origin, 0, ttl) > 0
    return rids


async def _score(plane: Plane, node: str, shard: int = 0) -> float | None:
    return await plane.client.zscore(plane.keys.load(shard), node)


def test_crc16_matches_redis_cluster_reference():
    # The Redis Cluster spec's test vector for CRC16-CCITT (XMODEM variant) is 0x31C3 for
    # "123456789"; CCITT-FALSE (init 0xFFFF) gives 0x29B1.
    assert crc16("123456789") == 0x29B1
    assert 0 <= shard_of("node-a", 4) < 4


async def test_unreachable_redis_is_one_line_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PlaneUnavailable) as ei:
        await Plane.open(RedisAddress(port=port), timeout=1.0)
    msg = str(ei.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg


async def test_enqueue_claim_fifo_and_score_tracks_queue(plane):
    rids = await _queue(plane, "a", 5)
    assert await _score(plane, "a") == 5
    # duplicate id refused, queue unchanged
    assert await plane.queues.enqueue("a", 0, rids[0], "{}", "rep", 0, 60) == 0
    got = await plane.queues.claim("a", 0, 2, worker="w1", lease_s=5)
    assert [c.rid for c in got] == rids[:2] and all(c.attempt == 1 for c in got)
    assert not any(c.stolen for c in got)
    assert await _score(plane, "a") == 3 == await plane.queues.length("a")
    assert await plane.queues.states(rids[:3]) == ["leased", "leased", "queued"]
    assert await plane.leases.held() == 2


async def test_steal_only_when_own_queue_empty_and_victim_heavy(plane):
    await _queue(plane, "busy", 2)
    await _queue(plane, "idle", 1)
    await plane.registry.own("busy", "rep", 30)  # alive: only stealable above min_load_score
    # own work first: no steal although a victim is named
    got = await plane.queues.claim("idle", 0, 1, "wi", 5, victim="busy", n_steal=1, min_score=1)
    assert [c.rid for c in got] == ["idle-r0"]
    # victim below min_load_score: nothing taken
    got = await plane.queues.claim("idle", 0, 1, "wi", 5, victim="busy", n_steal=1, min_score=3)
    assert got == []
    await _queue(plane, "busy", 2, start=2)  # now 4 queued
    got = await plane.queues.claim("idle", 0, 1, "wi", 5, victim="busy", n_steal=2, min_score=3)
    assert [c.rid for c in got] == ["busy-r0", "busy-r1"] and all(c.stolen for c in got)
    assert await _score(plane, "busy") == 2
    assert (await plane.stats())["stolen"] == 2
    # a dead node's leftover work is taken even below min_load_score
    await plane.registry.release("busy", "rep")
    got = await plane.queues.claim("idle", 0, 1, "wi", 5, victim="busy", n_steal=5, min_score=3)
    assert [c.rid for c in got] == ["busy-r2", "busy-r3"]
    assert await _score(plane, "busy") is None  # dropped from the load table once empty


async def test_concurrent_stealers_never_take_the_same_request(plane):
    n = 300
    await _queue(plane, "victim", n)
    await plane.registry.own("victim", "rep", 30)
    taken: list[str] = []

    async def stealer(i: int) -> None:
        me = f"thief{i}"
        while True:
            got = await plane.queues.claim(
                me, 0, 1, me, 30, victim="victim", n_steal=3, min_score=1
            )
            if not got:
                return
            taken.extend(c.rid for c in got)

    await asyncio.gather(*(stealer(i) for i in range(8)))
    assert len(taken) == n and len(set(taken)) == n
    assert await _score(plane, "victim") == 0
    assert await plane.leases.held() == n


async def test_unclaim_returns_to_head_in_order(plane):
    rids = await _queue(plane, "a", 4)
    got = await plane.queues.claim("a", 0, 3, "w", 5)
    assert await plane.queues.unclaim("w", got[1:]) == 2
    again = await plane.queues.claim("a", 0, 3, "w", 5)
    assert [c.rid for c in again] == [rids[1], rids[2], rids[3]]
    assert [c.attempt for c in again] == [2, 2, 1]


async def test_lease_expiry_requeues_and_fences_old_worker(plane):
    (rid,) = await _queue(plane, "a", 1)
    (c1,) = await plane.queues.claim("a", 0, 1, "w1", lease_s=0.2)
    ok = await plane.responses.push(c1, "w1", [Chunk(rid, c1.attempt, 0, ["x"])], False, 0.2)
    assert ok
    assert await plane.leases.reap() == 0  # lease just renewed by the push
    await asyncio.sleep(0.35)
    assert await plane.leases.reap() == 1
    assert await plane.queues.state(rid) == "queued" and await _score(plane, "a") == 1
    (c2,) = await plane.queues.claim("a", 0, 1, "w2", lease_s=5)
    assert c2.rid == rid and c2.attempt == 2
    # the first worker comes back: fenced out, cannot stream next to the new attempt
    assert not await plane.responses.push(c1, "w1", [Chunk(rid, 1, 1, ["y"])], True, 5)
    assert await plane.leases.renew("w1", [c1], 5) == [rid]
    assert await plane.leases.renew("w2", [c2], 5) == []
    assert await plane.responses.push(
        c2, "w2", [Chunk(rid, 2, 0, ["x"]), Chunk(rid, 2, 1, ["z"])], True, 5
    )
    assert await plane.queues.state(rid) == "done" and await plane.leases.held() == 0
    chunks = await plane.responses.read("rep", 0, 100, 0.1)
    assert [(c.attempt, c.seq, c.events) for c in chunks] == [
        (1, 0, ["x"]),
        (2, 0, ["x"]),
        (2, 1, ["z"]),
    ]
    assert (await plane.stats())["fenced"] == 1


async def test_reap_moves_work_of_dead_home_to_fallback(plane):
    (rid,) = await _queue(plane, "gone", 1)
    await plane.queues.claim("gone", 0, 1, "wg", lease_s=0.05)
    await asyncio.sleep(0.1)
    await plane.registry.own("live", "rep", 30)
    assert await plane.leases.reap(fallback="live", fallback_shard=0) == 1
    assert await plane.queues.length("live") == 1 and await plane.queues.length("gone") == 0
    (c,) = await plane.queues.claim("live", 0, 1, "wl", 5)
    assert c.rid == rid and c.home == "live"


async def test_cancel_queued_and_leased(plane):
    rids = await _queue(plane, "a", 3)
    assert await plane.queues.cancel(rids[1]) == "queued"
    assert await _score(plane, "a") == 2
    (c,) = await plane.queues.claim("a", 0, 1, "w", 5)
    assert await plane.queues.cancel(c.rid) == "leased"
    assert not await plane.responses.push(c, "w", [Chunk(c.rid, 1, 0, ["x"])], False, 5)
    got = await plane.queues.claim("a", 0, 5, "w", 5)
    assert [g.rid for g in got] == [rids[2]]
    assert await plane.queues.cancel("nope") == ""


async def test_ttl_expired_requests_are_skipped_by_claim(plane):
    await _queue(plane, "a", 2, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await plane.queues.claim("a", 0, 5, "w", 5) == []
    assert await plane.queues.state("a-r0") == "expired"
    assert await _score(plane, "a") == 0


async def test_adopt_dead_node_queue(plane):
    await _queue(plane, "dead", 2)
    await _queue(plane, "me", 1)
    await plane.registry.own("me", "rep", 30)
    assert await plane.leases.adopt("dead", 0, "me", 0) == 2
    assert await _score(plane, "dead") is None
    got = await plane.queues.claim("me", 0, 5, "w", 5)
    assert [c.rid for c in got] == ["dead-r0", "dead-r1", "me-r0"]
    # an alive node is not adopted
    await _queue(plane, "other", 1)
    await plane.registry.own("other", "rep2", 30)
    assert await plane.leases.adopt("other", 0, "me", 0) == 0


async def test_registry_ownership_and_expiry(plane):
    assert await plane.registry.own("n1", "repA", 0.3)
    assert not await plane.registry.own("n1", "repB", 0.3)
    assert await plane.registry.own("n1", "repA", 0.3)  # renew
    await plane.registry.publish(NodeInfo("n1", role="decode", shard=0, url="http://x"))
    (info,) = await plane.registry.nodes()
    assert info.alive and info.owner == "repA" and info.role == "decode"
    await asyncio.sleep(0.4)
    (info,) = await plane.registry.nodes()
    assert not info.alive
    assert await plane.registry.own("n1", "repB", 5)  # taken over after expiry
    assert not await plane.registry.release("n1", "repA")
    assert await plane.registry.release("n1", "repB")
    await plane.registry.heartbeat_replica("repA", 5)
    await plane.registry.heartbeat_replica("repB", 5)
    assert await plane.registry.live_replicas() == ["repA", "repB"]


async def test_topics_are_isolated(redis_proc):
    addr = RedisAddress(port=redis_proc.port)
    p1 = await Plane.open(addr, topic="blue")
    p2 = await Plane.open(addr, topic="green")
    try:
        await p1.queues.enqueue("n", 0, "r1", "{}", "rep", 0, 60)
        await p1.registry.own("n", "rep", 30)
        assert await p2.queues.claim("n", 0, 5, "w", 5) == []
        assert await p2.queues.claim("m", 0, 5, "w", 5, victim="n", n_steal=5, min_score=0) == []
        assert await p2.loads.scores() == {"m": 0.0}
        assert [c.rid for c in await p1.queues.claim("n", 0, 5, "w", 5)] == ["r1"]
    finally:
        await p1.close()
        await p2.close()


async def test_sharded_load_table(redis_proc):
    p = await Plane.open(RedisAddress(port=redis_proc.port), topic="sh", shards=4)
    try:
        names = [f"node{i}" for i in range(8)]
        for i, n in enumerate(names):
            s = p.loads.shard_of(n)
            for j in range(i):
                await p.queues.enqueue(n, s, f"{n}-{j}", "{}", "rep", 0, 60)
        scores = await p.loads.scores()
        assert scores == {n: float(i) for i, n in enumerate(names) if i > 0}
        heavy = []
        for s in range(4):
            heavy += [m for m, _ in await p.loads.heavy(s, 5)]
        assert sorted(heavy) == ["node5", "node6", "node7"]
    finally:
        await p.close()
