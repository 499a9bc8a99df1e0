"""The plane on a Redis Cluster: a local 3-master cluster (each master with a replica) started by
the fixture (`redis-server --cluster-enabled yes` + `redis-cli --cluster create`, free ports, a
temporary directory), the scripts on it, response lists spread over slots, and global mode serving
through a master's crash and its replica's promotion."""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest
from fastdeploy_harness import Tally, complete, dispatcher, engine, router, wait_until

from nexussched.localproc import REDIS_CLI, LocalRedisCluster
from nexussched.plane import Chunk, Plane, RedisAddress, crc16
from nexussched.router.modes import SchedulerParams

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def rcluster():
    if not shutil.which("redis-server") or not shutil.which(REDIS_CLI):
        pytest.skip("redis-server / redis-cli not installed")
    c = LocalRedisCluster(masters=3, replicas=1, node_timeout_ms=1000)
    try:
        yield c
    finally:
        c.stop()


def slot(key: str) -> int:
    tag = key[key.index("{") + 1 : key.index("}")]
    return crc16(tag) % 16384


async def test_cluster_address_forms():
    a = RedisAddress.parse("redis+cluster://10.0.0.1:7000,10.0.0.2")
    assert a.cluster and a.cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert RedisAddress.parse("h1:1,h2:2").cluster_nodes == (("h1", 1), ("h2", 2))
    assert not RedisAddress.parse("localhost").cluster
    with pytest.raises(ValueError, match="host:port"):
        RedisAddress.parse("h1:x,h2:2")
    with pytest.raises(ValueError, match="--scheduler-host"):
        SchedulerParams(name="global", host="a:1,b:nope").validate()


async def test_scripts_run_on_a_cluster_and_response_lists_spread(rcluster):
    p = await Plane.open(RedisAddress.parse(rcluster.seeds), topic="c", timeout=3.0)
    try:
        keys = p.keys
        lanes = [keys.resp(f"replica-{i}", lane) for i in range(4) for lane in range(4)]
        assert len({slot(k) for k in lanes} | {slot(keys.stats)}) > 8  # not one slot
        masters = {rcluster.master_of(k) for k in lanes}
        assert len(masters) == 3  # response lists land on every master
        for i in range(3):
            await p.queues.enqueue("n", 0, f"r{i}", "{}", "replica-0", i, 60)
        got = await p.queues.claim("n", 0, 3, "w", 5)
        assert [c.rid for c in got] == ["r0", "r1", "r2"]
        for c in got:
            assert await p.responses.push(c, "w", [Chunk(c.rid, 1, 0, ["x"], fin=True)], True, 5)
        for lane in range(3):
            (ch,) = await p.responses.read("replica-0", lane, 10, 0.1)
            assert ch.rid == f"r{lane}" and ch.fin
        await p.registry.heartbeat_replica("replica-0", 5, 4)
        assert await p.registry.live_replicas() == ["replica-0"]
        assert await p.leases.adopt("n", 0, "n", 0) == 0
        assert await p.leases.reap() == 0
    finally:
        await p.close()


async def test_global_mode_through_a_master_failover(rcluster):
    """Kill the master holding the topic's slot while streams run; its replica is promoted.
    Every client is answered (served, or a clear error for a stream whose events were lost in
    the failover): none hung, none lost silently, none duplicated or spliced."""
    e = await engine(max_num_seqs=6)
    p = SchedulerParams(
        name="global",
        host=rcluster.seeds,
        topic="fo",
        keepalive=3.0,
        lease=2.0,
        redis_timeout=1.0,
        progress_timeout=10.0,
    ).validate()
    r = await router([e.url], p)
    try:
        assert await wait_until(lambda: dispatcher(r).workers, timeout=20)
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(complete(s, r.url, 80, timeout=60)) for _ in range(24)]
            await asyncio.sleep(0.5)
            victim = rcluster.master_of("nxs:{fo}:stats")
            rcluster.kill(victim)
            res = await asyncio.gather(*tasks)
            # the replica took over (the test fails here if none did)
            await asyncio.to_thread(rcluster.wait_failover, "nxs:{fo}:stats", victim)
            after = await complete(s, r.url, 5, timeout=30)
    finally:
        await r.stop()
        await e.stop()
    t = Tally.of(res, 80)
    print(t.line("cluster-master-kill-24"))
    assert t.bad == (0, 0, 0, 0), res
    assert t.served > 0
    assert after.status == 200 and after.done, after
