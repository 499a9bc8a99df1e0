"""KV events for the live router's prefix-aware policies: engines -> policy.kv_event().

Each backend that serves `GET /kv_events?since=N` (engine-sim does: JSON lines
{"type": "BlockStored" | "BlockRemoved", "block_hashes": [...]}, vLLM's event names, blocks named
as the router hashes prompt blocks; `X-KV-Next` gives the next `since`) is polled every `interval`
seconds and its new events go to `policy.kv_event(idx, "stored" | "removed", hashes)`, the hook
the simulator calls for every block an engine caches or evicts. The policy's prefix index then
follows the engine's cache (exact evictions) instead of guessing with an LRU, late by at most one
poll. A backend without the endpoint (404; stock vLLM publishes its KV events over ZMQ, not HTTP)
is asked again only after `retry_s`, and its index stays the router's own guess.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp

from .policies.view import TELEMETRY_POLL
from .telemetry_feed import poll_backends, poll_forever

log = logging.getLogger("nexussched.router")

KINDS = {"BlockStored": "stored", "BlockRemoved": "removed"}


class KvEventFeed:
    def __init__(
        self,
        consume: Callable[[int, str, list[int]], None],
        backends: Sequence,
        session: aiohttp.ClientSession,
        interval: float = TELEMETRY_POLL,
        retry_s: float = 30.0,
        limit: int = 10000,
    ) -> None:
        self.consume = consume
        self.backends = backends
        self.session = session
        self.interval = interval
        self.retry_s = retry_s
        self.limit = limit
        self._since: dict[str, int] = {}  # by backend URL (indices may be re-used)
        self._skip_until: dict[str, float] = {}
        self.events = 0  # events handed to the policy
        self.dropped = 0  # events the engines' buffers no longer held when asked

    async def poll_once(self) -> int:
        """Fetch new events from every healthy backend; returns how many were handed on."""
        return await poll_backends(self._poll, self.backends)

    async def _poll(self, idx: int, backend) -> int:
        url = backend.url.rstrip("/")
        now = time.monotonic()
        if self._skip_until.get(url, 0.0) > now:
            return 0
        n = 0
        while True:  # page until caught up (a first poll reads the engine's kept history)
            since = self._since.get(url, 0)
            q = {"since": str(since), "limit": str(self.limit)}
            async with self.session.get(url + "/kv_events", params=q) as resp:
                if resp.status == 404:
                    self._skip_until[url] = now + self.retry_s
                    return n
                if resp.status != 200:
                    return n
                text = await resp.text()
                nxt = int(resp.headers.get("X-KV-Next", since))
                self.dropped += int(resp.headers.get("X-KV-Dropped", 0))
            self._since[url] = nxt
            lines = text.splitlines()
            for line in lines:
                try:
                    ev = json.loads(line)
                    kind = KINDS.get(ev["type"])
                    hashes = [int(h) for h in ev["block_hashes"]]
                except (ValueError, KeyError, TypeError):
                    continue  # one bad event must not stop the feed
                if kind is not None:
                    self.consume(idx, kind, hashes)
                    n += 1
            if len(lines) < self.limit or nxt <= since:
                break
        self.events += n
        return n

    async def run(self) -> None:
        await poll_forever(self.poll_once, self.interval, "kv event feed")
