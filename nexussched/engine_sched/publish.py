"""Publishing an engine's perf model and load to the Redis plane (redis-py, synchronous).

Keys share the plane's topic namespace (``nxs:{<topic>}:``, see nexussched/plane/keys.py):

| key                               | type   | holds                                                 |
|-----------------------------------|--------|-------------------------------------------------------|
| ``nxs:{<topic>}:model:<engine>``  | string | JSON of PerfModel.to_dict() plus "t" (unix seconds)   |
| ``nxs:{<topic>}:engine_load:<engine>`` | string | JSON load: num_running, num_waiting, kv_usage,   |
|                                   |        | queued_prefill_tokens, decode_ctx_sum, steps, t;      |
|                                   |        | expires after `load_ttl` seconds unless renewed       |

A router replica reads them to predict with the engine's own learned model. Publishing never
raises: an engine must keep serving when Redis is down (errors are counted and logged once).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from ..perfmodel import PerfModel

log = logging.getLogger(__name__)


def model_key(topic: str, engine: str) -> str:
    return f"nxs:{{{topic}}}:model:{engine}"


def load_key(topic: str, engine: str) -> str:
    return f"nxs:{{{topic}}}:engine_load:{engine}"


def publish_model(
    client, topic: str, engine: str, model: PerfModel, now: float | None = None
) -> None:
    d = model.to_dict()
    d["t"] = time.time() if now is None else now
    client.set(model_key(topic, engine), json.dumps(d))


def publish_load(client, topic: str, engine: str, load: dict, ttl: float = 10.0) -> None:
    client.set(load_key(topic, engine), json.dumps(load), px=max(1, int(ttl * 1000)))


def read_model(client, topic: str, engine: str) -> PerfModel | None:
    raw = client.get(model_key(topic, engine))
    return PerfModel.from_dict(json.loads(raw)) if raw else None


def read_load(client, topic: str, engine: str) -> dict | None:
    raw = client.get(load_key(topic, engine))
    return json.loads(raw) if raw else None


@dataclass
class Publisher:
    """Rate-limited publisher for one engine; `maybe_publish` is cheap when it is not time yet."""

    url: str
    topic: str
    engine: str
    every: float = 1.0  # seconds between publications
    load_ttl: float = 10.0
    published: int = 0
    errors: int = 0
    _client: object = field(default=None, repr=False)
    _last: float = field(default=-1e18, repr=False)

    def _conn(self):
        if self._client is None:
            import redis  # only engines that publish need redis-py

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
            )
        return self._client

    def maybe_publish(self, model: PerfModel, load: dict, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._last < self.every:
            return False
        self._last = now
        try:
            c = self._conn()
            publish_model(c, self.topic, self.engine, model)
            publish_load(c, self.topic, self.engine, load, self.load_ttl)
        except Exception as e:  # noqa: BLE001 - any Redis failure must not stop the engine
            self.errors += 1
            if self.errors == 1:
                log.warning("nexussched: publishing to %s failed: %s", self.url, e)
            return False
        self.published += 1
        return True
