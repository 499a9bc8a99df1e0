"""The telemetry plane: engines publish step records to a Redis Stream per engine through the
plug-in's publisher; every router replica reads them with its own cursor and learns the same model.
All against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import redis
import redis.asyncio as aioredis

from nexussched.engine_sched import LensPolicy
from nexussched.engine_sched.publish import Publisher, read_load, read_model_card
from nexussched.engine_sched.telemetry import StepSink
from nexussched.perfmodel import StepRecord, mape
from nexussched.plane.keys import KeySpace
from nexussched.plane.streams import LOAD, STEP, decode_entry, parse_model_card
from nexussched.router.policies import Prism, make_policy
from nexussched.router.prism_share import PrismShare
from nexussched.router.stream_feed import StreamFeed
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest

TOPIC = "plane"


class _Backend:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.healthy = True


def _telemetry(spec: str, n: int = 500, seed: int = 3) -> dict[str, list[StepRecord]]:
    """Step records of a simulated cluster (ground truth: the hardware profiles), by engine."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.08, n))
    reqs = [
        TraceRequest(i, float(t[i]), int(rng.integers(50, 2500)), int(rng.integers(8, 120)))
        for i in range(n)
    ]
    recs: list[StepRecord] = []
    ClusterSim(parse_cluster(spec), make_policy("round_robin"), telemetry=recs.append).run(
        Trace("plane", reqs), 5.0, 0.2
    )
    out: dict[str, list[StepRecord]] = {}
    for r in recs:
        out.setdefault(r.engine, []).append(r)
    return out


def _plugin_sink(url: str, engine: str, addr: str | None = None) -> StepSink:
    """What the vLLM plug-in builds for each engine (vllm_plugin._LensMixin._lens_setup)."""
    lens = LensPolicy(engine_name=engine)
    pub = Publisher(url, TOPIC, engine, addr, flush_every=0.02, every=0.05)
    load = {"num_running": 3, "num_waiting": 1, "kv_usage": 0.25}
    return StepSink(lens.observe, lambda: lens.model, lambda: dict(load), None, pub.start())


async def _drain(feed: StreamFeed, want: int, tries: int = 400) -> None:
    for _ in range(tries):
        await feed.poll_once()
        if feed.records >= want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"read {feed.records} of {want} records")


async def test_replicas_learn_each_engine_from_records_published_by_the_plugin(redis_proc):
    by_engine = _telemetry("h100:1,l4:1")
    names = sorted(by_engine)
    assert len(names) == 2 and all(len(by_engine[n]) > 400 for n in names)
    train = {n: by_engine[n][: int(len(by_engine[n]) * 0.7)] for n in names}
    held = {n: by_engine[n][len(train[n]) :] for n in names}
    url = redis_proc.url
    backends = [_Backend(names[0], "http://127.0.0.1:1"), _Backend("b1", "http://127.0.0.1:2")]
    r = aioredis.from_url(url)
    policies = [Prism(), Prism()]
    feeds = [StreamFeed(p.observe, backends, r, TOPIC, discover_every=0.0) for p in policies]
    try:
        # replica 0 is up before the engines publish; replica 1 starts after they are done
        await feeds[0].poll_once()
        # engine 1 is found by the address it announces, not its name
        sinks = [_plugin_sink(url, names[0]), _plugin_sink(url, names[1], "127.0.0.1:2")]
        for k, name in enumerate(names):
            for rec in train[name]:
                sinks[k].on_step(rec)
        for s in sinks:
            s.close()  # flushes what is queued
        total = sum(len(v) for v in train.values())
        assert [s.steps for s in sinks] == [len(train[n]) for n in names]
        await _drain(feeds[0], total)
        await _drain(feeds[1], total)
        for k in range(2):
            # the same records, in the same order, per engine: the same model
            assert feeds[0].by_engine == feeds[1].by_engine == {0: len(train[names[0]]),
                                                                1: len(train[names[1]])}  # fmt: skip
            np.testing.assert_allclose(policies[0].model(k).coef, policies[1].model(k).coef)
            err, _ = mape(policies[0].model(k), held[names[k]])
            assert err < 0.15, (names[k], err)
            assert feeds[0].loads[k]["num_running"] == 3
        # each engine's own model, learned by the plug-in, sits where the router reads it
        sync = redis.Redis.from_url(url)
        for name in names:
            card = read_model_card(sync, TOPIC, name)
            assert card is not None and card.steps == len(train[name])
            assert card.by == f"engine:{name}"
            assert read_load(sync, TOPIC, name)["num_waiting"] == 1
        # the slow engine is learned as slow (the prior knows no difference)
        fast, slow = (0, 1) if names[0].startswith("h100") else (1, 0)
        p = policies[0]
        assert p.model(slow).predict_step(prefill_tokens=2000) > 1.5 * p.model(fast).predict_step(
            prefill_tokens=2000
        )
    finally:
        await r.aclose()


async def test_a_replica_without_telemetry_adopts_the_engines_published_model(redis_proc):
    # the key mismatch: the plug-in's model and the router's shared models are one key now
    recs = _telemetry("l4:1", n=300)
    (name,) = recs
    sink = _plugin_sink(redis_proc.url, name)
    for rec in recs[name]:
        sink.on_step(rec)
    sink.close()
    r = aioredis.from_url(redis_proc.url)
    try:
        p = Prism()
        assert not p.model(0).fitted
        share = PrismShare(p, r, "lone", lambda: [name], topic=TOPIC, model_every=0.0)
        await share.sync_once()
        assert share.adopted == 1 and p.model(0).fitted
        err, _ = mape(p.model(0), recs[name][-100:])
        assert err < 0.15
        # a replica never overwrites a model learned from more steps than it saw
        raw = await r.get(KeySpace(TOPIC).model(name))
        assert parse_model_card(raw).by == f"engine:{name}"
    finally:
        await r.aclose()


def test_stream_is_capped_and_entries_decode(redis_proc):
    pub = Publisher(redis_proc.url, TOPIC, "e0", flush_every=0.01, maxlen=500)
    for i in range(3000):
        pub.step(StepRecord(0.01, ((10, 0),), 2, 100, step=i, engine="e0"))
        if i % 500 == 499:
            assert pub.flush()
    pub.offer(None, 0, {"num_waiting": 7})
    assert pub.flush()
    c = redis.Redis.from_url(redis_proc.url)
    key = KeySpace(TOPIC).steps("e0")
    n = c.xlen(key)
    assert 500 <= n < 1500  # MAXLEN ~: trimmed in whole macro nodes, never unbounded
    entries = c.xrange(key)
    kinds = [decode_entry(f)[0] for _, f in entries]
    assert kinds[-1] == LOAD and set(kinds[:-1]) == {STEP}
    last_step = decode_entry(entries[-2][1])[1]
    assert last_step.step == 2999 and last_step.prefill_chunks == ((10, 0),)
    assert decode_entry({b"k": b"s", b"d": b"{not json"}) is None
    assert pub.published == 3000 and pub.dropped == 0


def test_publisher_never_raises_when_redis_is_down(redis_proc):
    pub = Publisher(redis_proc.url, TOPIC, "e1", flush_every=0.01)
    redis_proc.stop()
    pub.start()
    for i in range(50):
        pub.step(StepRecord(0.01, (), 1, 10, step=i))
    deadline = time.monotonic() + 10
    while pub.errors == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    pub.close()
    assert pub.errors >= 1 and pub.dropped == 50 and pub.published == 0
