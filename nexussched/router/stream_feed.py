"""Step telemetry from the Redis telemetry plane: every engine's stream -> policy.observe().

Engines running the vLLM plug-in, and engine-sim with `--redis-url`, append their step records and
load snapshots to one Redis Stream per engine (engine_sched/publish.py; key names in
plane/keys.py, wire format in plane/streams.py). Each router replica reads all of them with its
own cursors (`XREAD` from the last id it read, starting at the oldest entry kept), so every replica
learns from the same records, and one that starts late catches up on what the stream still holds.

An engine is matched to a backend by name (the plug-in's NEXUS_ENGINE_NAME, engine-sim's --name)
or by the host:port it announces in the plane's ``engines`` hash (NEXUS_ENGINE_ADDR; engine-sim
announces its own). Streams of engines this router does not serve are ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from ..perfmodel.telemetry import StepRecord
from ..plane.keys import KeySpace
from ..plane.streams import LOAD, STEP, decode_entry
from .outage import OutageLog

log = logging.getLogger("nexussched.router")


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def backend_addr(url: str) -> str:
    p = urlsplit(url)
    return f"{p.hostname}:{p.port}" if p.port else str(p.hostname)


class StreamFeed:
    def __init__(
        self,
        observe: Callable[[int, StepRecord], None],
        backends: Sequence,
        redis,
        topic: str = "default",
        interval: float = 0.1,
        count: int = 5000,
        discover_every: float = 2.0,
    ) -> None:
        """`redis`: a redis.asyncio client; `backends`: objects with `name` and `url`."""
        self.observe = observe
        self.backends = backends
        self.redis = redis
        self.keys = KeySpace(topic)
        self.interval = interval
        self.outage = OutageLog("telemetry plane (Redis)", log)
        self.count = count
        self.discover_every = discover_every
        self._cursor: dict[str, str] = {}  # stream key -> last id read
        self._idx: dict[str, int] = {}  # stream key -> backend index
        self._engine: dict[int, str] = {}  # backend index -> engine name on the plane
        self._last_discover = -1e18
        self.records = 0
        self.by_engine: dict[int, int] = {}  # records observed per backend index
        self.loads: dict[int, dict] = {}  # latest load snapshot per backend index
        # taught(idx): the highest step number another source (the HTTP feed) already taught
        # this backend, or None; the stream's records up to it are skipped, so no step is learned
        # twice while the sources are being found
        self.taught: Callable[[int], int | None] | None = None
        self._skip: dict[int, int] = {}

    def covers(self, idx: int) -> bool:
        """Whether engine `idx` publishes on the plane (then no other source should teach it)."""
        return idx in self._engine

    def engine_name(self, idx: int) -> str | None:
        return self._engine.get(idx)

    async def discover(self) -> None:
        """Map the engines announced on the plane (and their streams) to this router's backends."""
        by_name = {b.name: i for i, b in enumerate(self.backends)}
        by_addr = {backend_addr(b.url): i for i, b in enumerate(self.backends)}
        engines: dict[str, str | None] = {}
        for name, raw in (await self.redis.hgetall(self.keys.engines)).items():
            try:
                engines[_text(name)] = json.loads(_text(raw)).get("addr")
            except (ValueError, AttributeError):
                engines[_text(name)] = None
        prefix = self.keys.steps("")
        async for k in self.redis.scan_iter(match=prefix + "*", count=1000):
            engines.setdefault(_text(k)[len(prefix) :], None)
        for name, addr in engines.items():
            idx = by_name.get(name)
            if idx is None and addr:
                idx = by_addr.get(addr)
            if idx is None:
                continue
            key = self.keys.steps(name)
            if key not in self._idx:
                self._cursor[key] = "0"
                seen = self.taught(idx) if self.taught is not None else None
                if seen is not None:
                    self._skip[idx] = seen
                log.info("telemetry plane: learning backend %s from stream %s", idx, key)
            self._idx[key] = idx
            self._engine[idx] = name

    async def poll_once(self) -> int:
        """Read what is new on every stream; returns how many step records were observed."""
        now = time.monotonic()
        if now - self._last_discover >= self.discover_every:
            self._last_discover = now
            await self.discover()
        if not self._cursor:
            return 0
        got = await self.redis.xread(dict(self._cursor), count=self.count)
        n = 0
        for key, entries in got or ():
            k = _text(key)
            idx = self._idx.get(k)
            for eid, fields in entries:
                self._cursor[k] = _text(eid)
                if idx is None:
                    continue
                dec = decode_entry(fields)
                if dec is None:
                    continue
                kind, val = dec
                if kind == STEP:
                    if val.step <= self._skip.get(idx, -1):  # type: ignore[union-attr]
                        continue
                    self.observe(idx, val)  # type: ignore[arg-type]
                    n += 1
                    self.by_engine[idx] = self.by_engine.get(idx, 0) + 1
                elif kind == LOAD:
                    self.loads[idx] = val  # type: ignore[assignment]
        self.records += n
        return n

    async def run(self) -> None:
        while True:
            try:
                n = await self.poll_once()
                self.outage.ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down: keep routing on what was learned
                self.outage.fail(e)
                n = 0
            if n < self.count:  # caught up: wait; behind: read on at once
                await asyncio.sleep(self.interval)
