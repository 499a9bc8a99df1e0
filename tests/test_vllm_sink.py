"""The vLLM plug-in's step sink (vLLM-free): an engine that goes idle publishes its load at once.

Load snapshots go to the plane at most once per publish period, from the engine's step loop. The
last busy step of a burst would leave the plane with that step's snapshot until the next request
(an idle engine runs no step to send a newer one): the counts of its last work (the prefix-cache
hits of the vLLM tier's test among them) would never arrive. Against a real redis-server.
"""

from __future__ import annotations

import redis

from nexussched.engine_sched import LensPolicy
from nexussched.engine_sched.publish import Publisher, read_load
from nexussched.engine_sched.telemetry import StepSink
from nexussched.perfmodel import StepRecord

TOPIC = "sink"


def _sink(url: str, load: dict) -> tuple[StepSink, Publisher]:
    lens = LensPolicy(engine_name="e0")
    # a period far longer than the test: only the first step and an idle step may offer
    pub = Publisher(url, TOPIC, "e0", flush_every=0.02, every=3600.0)
    return StepSink(lens.observe, lambda: lens.model, lambda: dict(load), None, pub.start()), pub


def _step(k: int) -> StepRecord:
    return StepRecord(duration=0.01, prefill_chunks=((64, 0),), num_decodes=2, decode_ctx_sum=300,
                      step=k, engine="e0")  # fmt: skip


def test_an_engine_going_idle_publishes_its_last_load_at_once(redis_proc):
    load = {"num_running": 2, "num_waiting": 0, "prefix_hits": 0}
    sink, pub = _sink(redis_proc.url, load)
    c = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    try:
        sink.on_step(_step(0))  # the first step is due: the plane gets this snapshot
        load["prefix_hits"] = 128
        for k in range(1, 5):
            sink.on_step(_step(k))  # busy steps within the period: no new snapshot
        pub.close()  # flushes what was offered, and only that
        assert read_load(c, TOPIC, "e0")["prefix_hits"] == 0
        sink2, pub2 = _sink(redis_proc.url, load)
        sink2.on_step(_step(0))
        load.update(num_running=0, prefix_hits=256)
        sink2.on_step(_step(1), idle=True)  # the last step of the burst
        pub2.close()
        got = read_load(c, TOPIC, "e0")
        assert got["prefix_hits"] == 256 and got["num_running"] == 0
    finally:
        pub.close()
