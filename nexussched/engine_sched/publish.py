"""An engine's publisher on the telemetry plane: step records, load snapshots and its fitted model.

One `Publisher` per engine, used the same way by the vLLM plug-in (vllm_plugin.py) and by engine-sim
(sim/server.py). The engine's own thread only appends to a bounded in-memory queue (`step`) and,
at most once per period, hands over its load and its model (`offer`); one background thread owns
the Redis connection and every `flush_every` seconds writes, in one pipeline:
- each new step record to the engine's stream (``XADD steps:<engine> MAXLEN ~ maxlen``),
- the latest load snapshot to the same stream and to ``engine_load:<engine>`` (expiring),
- the model card to ``model:<engine>`` and the engine's address to the ``engines`` hash.
Key names come from nexussched/plane/keys.py, the wire format from plane/streams.py, so every router
replica reads exactly what the engines write (router/stream_feed.py).

Publishing never raises into the engine and never blocks its step: with Redis down the batch is
dropped (counted in `dropped`), the error is logged once, and the thread retries after a pause.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque

from ..perfmodel import PerfModel, StepRecord
from ..plane.keys import KeySpace
from ..plane.streams import (
    DEFAULT_MAXLEN,
    ModelCard,
    encode_load,
    encode_step,
    model_card,
    parse_model_card,
)

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 10.0  # s a connected Redis may take to answer the publisher's pipeline


class Publisher:
    """Background publisher of one engine. `start()` it, feed it, `close()` it (flushes)."""

    def __init__(
        self,
        url: str,
        topic: str,
        engine: str,
        addr: str | None = None,
        flush_every: float = 0.1,
        every: float = 1.0,  # seconds between model cards and load snapshots
        load_ttl: float = 10.0,
        maxlen: int = DEFAULT_MAXLEN,
        buffer: int = 50_000,
        client: object = None,
    ) -> None:
        if flush_every <= 0 or every <= 0 or maxlen <= 0 or buffer <= 0:
            raise ValueError("publisher periods, maxlen and buffer must be positive")
        self.url = url
        self.keys = KeySpace(topic)
        self.engine = engine
        self.addr = addr
        self.flush_every = flush_every
        self.every = every
        self.load_ttl = load_ttl
        self.maxlen = maxlen
        self._q: deque[StepRecord] = deque(maxlen=buffer)
        self._load: dict | None = None
        self._card: str | None = None
        self._last_offer = -1e18
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one flush at a time (thread and close())
        self.published = 0  # step records written
        self.cards = 0
        self.dropped = 0  # records lost to a full buffer or a failed write
        self.errors = 0

    # ---- the engine's side (cheap, never blocks) ----------------------------------------------
    def step(self, rec: StepRecord) -> None:
        if len(self._q) == self._q.maxlen:
            self.dropped += 1
        self._q.append(rec)

    def due(self, now: float | None = None) -> bool:
        """Whether a period has passed since the last model and load were handed over."""
        now = time.monotonic() if now is None else now
        return now - self._last_offer >= self.every

    def offer(
        self, model: PerfModel | None, steps: int, load: dict | None, now: float | None = None
    ) -> None:
        """Hand over the latest model (learned from `steps` records) and load snapshot."""
        self._last_offer = time.monotonic() if now is None else now
        if load is not None:
            self._load = dict(load)
        if model is not None and model.fitted:
            self._card = model_card(model, steps, by=f"engine:{self.engine}")

    # ---- the publishing thread -----------------------------------------------------------------
    def start(self) -> Publisher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"nxs-publish-{self.engine}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _conn(self):
        if self._client is None:
            import redis  # only engines that publish need redis-py

            # A refused or unreachable Redis fails the connect within a second; a connected one
            # gets REPLY_TIMEOUT to answer. This thread is off the engine's path, so a slow reply
            # only delays publishing, while a timeout drops the batch: with 1 s, a loaded 2-core
            # machine (vLLM tier beside two CPU hogs, load 8-13) lost 80 of 5,198 step records.
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=REPLY_TIMEOUT,
                socket_connect_timeout=1.0,
                decode_responses=True,
            )
        return self._client

    def _run(self) -> None:
        last_addr = -1e18
        wait = 0.0  # announce at once: a router finds the engine before its first step
        while not self._stop.wait(wait):
            wait = self.flush_every
            now = time.monotonic()
            ok = self.flush(announce=now - last_addr >= 5.0)
            if ok and now - last_addr >= 5.0:
                last_addr = now
            if not ok:
                self._stop.wait(1.0)  # Redis down: back off, the engine keeps serving

    def flush(self, announce: bool = False) -> bool:
        """Write what is queued now; returns False if Redis refused (the batch is dropped)."""
        with self._lock:
            recs = []
            q = self._q
            while q:
                recs.append(q.popleft())
            load, self._load = self._load, None
            card, self._card = self._card, None
            if not recs and load is None and card is None and not announce:
                return True
            k = self.keys
            stream = k.steps(self.engine)
            try:
                pipe = self._conn().pipeline(transaction=False)
                for r in recs:
                    pipe.xadd(stream, encode_step(r), maxlen=self.maxlen, approximate=True)
                if load is not None:
                    pipe.xadd(stream, encode_load(load), maxlen=self.maxlen, approximate=True)
                    pipe.set(
                        k.engine_load(self.engine),
                        json.dumps(load),
                        px=max(1, int(self.load_ttl * 1000)),
                    )
                if card is not None:
                    pipe.set(k.model(self.engine), card)
                if announce or card is not None:
                    info = {"addr": self.addr, "t": time.time()}
                    pipe.hset(k.engines, self.engine, json.dumps(info))
                pipe.execute()
            except Exception as e:  # noqa: BLE001 - any Redis failure must not stop the engine
                self.errors += 1
                self.dropped += len(recs)
                if self.errors == 1:
                    log.warning("nexussched: publishing to %s failed: %s", self.url, e)
                return False
            self.published += len(recs)
            self.cards += card is not None
            return True


# ---- readers (tests, tools; the router reads through router/stream_feed.py) -------------------
def read_model_card(client, topic: str, engine: str) -> ModelCard | None:
    return parse_model_card(client.get(KeySpace(topic).model(engine)))


def read_model(client, topic: str, engine: str) -> PerfModel | None:
    card = read_model_card(client, topic, engine)
    return card.model if card is not None else None


def read_load(client, topic: str, engine: str) -> dict | None:
    raw = client.get(KeySpace(topic).engine_load(engine))
    return json.loads(raw) if raw else None
