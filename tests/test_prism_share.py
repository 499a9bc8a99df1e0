"""Several PRISM router replicas sharing engine state and models through a real redis-server."""

from __future__ import annotations

import redis.asyncio as aioredis

from nexussched.router.policies import Prism, RequestInfo
from nexussched.router.prism_share import PrismShare, share_key
from tests.test_prism import View, teach

SPEEDS = (1.0, 2.0, 4.0)  # engine 0 fast, engine 2 slow


def replica(seed: int, taught: bool = True) -> Prism:
    p = Prism(jitter=0.02, seed=seed, hold_for_pace=True)  # the shared pacing clocks
    if taught:
        for i, s in enumerate(SPEEDS):
            teach(p, i, s, seed=10 + i)
    return p


def burst(routers: list[Prism], views, shares=None, n=1000, gap=0.004, sync_every=12):
    """n requests of 2000 prompt tokens, arriving `gap` s apart, taken in turn by the routers.

    Returns the requests each engine got. With `shares`, every router syncs through Redis
    every `sync_every` requests (sync_every * gap = the 50 ms sync interval)."""

    async def run():
        got = [0] * len(views)
        for k in range(n):
            now = k * gap
            if shares and k % sync_every == 0:
                for s in shares:
                    s.clock = s.shared_time = lambda now=now: now  # simulated time
                    await s.sync_once()
            idx = routers[k % len(routers)].route(
                RequestInfo(k, 2000, 100, now, 2.0, 0.1), views, now
            )
            if idx is not None:
                got[idx] += 1
        return got

    return run()


async def test_replicas_sharing_state_do_not_herd_onto_the_fast_engine(redis_proc):
    views = [View("e0"), View("e1"), View("e2")]
    alone = await burst([replica(1)], views)  # one router seeing every request
    blind = await burst([replica(1), replica(2)], views)  # two replicas, no sharing
    r = aioredis.Redis(port=redis_proc.port)
    try:
        a, b = replica(1), replica(2)
        names = lambda: [v.name for v in views]  # noqa: E731
        shares = [PrismShare(a, r, "A", names, topic="t"), PrismShare(b, r, "B", names, topic="t")]
        shared = await burst([a, b], views, shares)
        assert await r.exists(share_key("t", "A")) and await r.exists(share_key("t", "B"))
    finally:
        await r.aclose()
    # Without sharing each replica spends the fast engine's capacity again: it gets about twice
    # what one router would send it. Sharing keeps the pair within a sync interval of one router.
    assert blind[0] >= 1.6 * alone[0]
    assert shared[0] <= 1.25 * alone[0] + 2
    assert sum(shared) <= 1.25 * sum(alone) + 3
    assert shared[2] <= shared[0]  # still by learned speed


async def test_a_late_replica_adopts_the_models_the_others_learned(redis_proc):
    views = [View("e0"), View("e1"), View("e2")]
    r = aioredis.Redis(port=redis_proc.port)
    try:
        a, late = replica(1), replica(2, taught=False)
        names = lambda: [v.name for v in views]  # noqa: E731
        sa = PrismShare(a, r, "A", names, topic="m")
        sb = PrismShare(late, r, "B", names, topic="m")
        await sa.sync_once()
        await sb.sync_once()
        for i in range(3):
            assert late.model(i).coef.tolist() == a.model(i).coef.tolist()
        t = [late.predict(RequestInfo(0, 3000, 50, 0.0, 2.0, 0.1), i, 0.0)[0] for i in range(3)]
        assert t[0] < t[1] < t[2]
        await sa.close()
        assert not await r.exists(share_key("m", "A"))
    finally:
        await r.aclose()
