"""Step telemetry for the live router's learning policies (PRISM): engines -> policy.observe().

Each backend that serves `GET /telemetry?since=N` (engine-sim does; JSON lines of StepRecords,
`X-Telemetry-Next` giving the next `since`) is polled every `interval` seconds and its new records
go to `policy.observe(idx, record)`. A backend without the endpoint (404) is asked again only
after `retry_s`. The policy never learns where the records came from: the simulator calls the
same `observe` for every simulated step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from ..perfmodel.telemetry import StepRecord
from .policies.view import TELEMETRY_POLL
from .telemetry_thin import LEARN_BUDGET, LEARN_WARMUP, RateGate, thin

log = logging.getLogger("nexussched.router")


async def poll_forever(poll: Callable[[], Awaitable[object]], interval: float, what: str) -> None:
    """Call `poll` every `interval` seconds until cancelled; a failed poll is logged, never
    raised: a feed must not take the router down."""
    while True:
        try:
            await poll()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("%s: %r", what, e)
        await asyncio.sleep(interval)


async def poll_backends(
    poll: Callable[[int, object], Awaitable[int]],
    backends: Sequence,
    skip: Callable[[int], bool] | None = None,
) -> int:
    """`poll(idx, backend)` on every healthy backend not skipped, at once; the sum of what they
    return (a failed one counts 0)."""
    got = await asyncio.gather(
        *(
            poll(i, b)
            for i, b in enumerate(backends)
            if b.healthy and not (skip is not None and skip(i))
        ),
        return_exceptions=True,
    )
    return sum(n for n in got if isinstance(n, int))


def _record(line: str) -> StepRecord | None:
    try:
        return StepRecord.from_dict(json.loads(line))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_lines(lines: list[str]) -> list | None:
    """JSON lines parsed in one call, as one array (a json.loads per line was most of what the
    feed cost the router); None when that fails (a bad line), so each is parsed on its own and
    only the bad one is lost. One document per line, else None: the i-th is the i-th line's."""
    if not lines:
        return []
    try:
        docs = json.loads("[" + ",".join(lines) + "]")
    except ValueError:
        return None
    return docs if len(docs) == len(lines) else None


class TelemetryFeed:
    def __init__(
        self,
        observe: Callable[[int, StepRecord], None],
        backends: Sequence,
        session: aiohttp.ClientSession,
        interval: float = TELEMETRY_POLL,
        retry_s: float = 30.0,
        limit: int = 256,
        skip: Callable[[int], bool] | None = None,
        learn_budget: float = LEARN_BUDGET,
        seen: Callable[[int, StepRecord], None] | None = None,
        warmup: int = LEARN_WARMUP,
    ) -> None:
        """`skip(idx)`: True for a backend taught another way (its Redis stream).

        At most `limit` records per backend and poll: an engine that steps faster than that
        (`limit` / `interval` steps a second; 1,280 by default, beyond any real engine) or a
        long history on a first poll is sampled, not read whole: the feed jumps to its newest
        records (`skipped` counts the rest), so learning never costs the router more than that."""
        self.observe = observe
        self.backends = backends
        self.session = session
        self.interval = interval
        self.retry_s = retry_s
        self.limit = limit
        self._since: dict[str, int] = {}  # by backend URL (indices may be re-used)
        self._skip_until: dict[str, float] = {}
        self._served: set[int] = set()  # backends that answered GET /telemetry
        self._absent: set[int] = set()  # backends that answered 404
        self.last_step: dict[int, int] = {}  # highest step number observed per backend
        self.skip = skip
        self.records = 0
        self.skipped = 0  # records left unread because the feed fell `limit` behind
        self.learn_budget = learn_budget
        self.seen = seen
        self._gates: dict[int, RateGate] = {}
        self.warmup = warmup
        self._learned: dict[int, int] = {}  # records learned per backend
        self.thinned = 0  # records read but not learned (over the learning budget)

    def serves(self, idx: int) -> bool:
        return idx in self._served

    def lacks(self, idx: int) -> bool:
        """Whether backend idx answered 404 to GET /telemetry (serves none)."""
        return idx in self._absent

    async def poll_once(self) -> int:
        """Fetch new records from every healthy backend; returns how many were observed."""
        return await poll_backends(self._poll, self.backends, self.skip)

    async def _poll(self, idx: int, backend) -> int:
        url = backend.url.rstrip("/")
        now = time.monotonic()
        if self._skip_until.get(url, 0.0) > now:
            return 0
        since = self._since.get(url, 0)
        q = {"since": str(since), "limit": str(self.limit)}
        async with self.session.get(url + "/telemetry", params=q) as resp:
            if resp.status == 404:
                self._skip_until[url] = now + self.retry_s
                self._absent.add(idx)
                return 0
            if resp.status != 200:
                return 0
            text = await resp.text()
            nxt = resp.headers.get("X-Telemetry-Next")
            total = resp.headers.get("X-Telemetry-Total")
        if self.skip is not None and self.skip(idx):
            return 0  # its stream was found while this poll was in flight: the stream teaches it
        self._served.add(idx)
        self._since[url] = int(nxt) if nxt is not None else since
        if nxt is not None and total is not None and int(total) - int(nxt) > self.limit:
            # more than a poll's worth still unread: go on from the newest `limit` records
            self._since[url] = int(total) - self.limit
            self.skipped += self._since[url] - int(nxt)
        if self.skip is not None and self.skip(idx):
            return 0  # taught another way since this poll began (its stream holds these too)
        return self.ingest(idx, [ln for ln in text.splitlines() if ln], now)

    def ingest(self, idx: int, lines: list[str], now: float) -> int:
        """One poll's records of backend `idx` (JSON lines, oldest first) received at `now`:
        learn them (at most the budget's share); returns how many were learned."""
        top = was = self.last_step.get(idx, -1)
        level = self._gate(idx).update(len(lines), now)
        if self._learned.get(idx, 0) < self.warmup:
            level = 0  # every record until the model has a window's worth
        newest = None
        if level and lines:
            # above the budget: learn the records whose step hashes in (learn_budget), and the
            # engine's newest batch from its newest record whether learned or not
            keep, skipped_top = thin(lines, level)
            if skipped_top > top:
                top = skipped_top
            self.thinned += len(lines) - len(keep)
            if (not keep or keep[-1] is not lines[-1]) and self.seen is not None:
                newest = _record(lines[-1])
            lines = keep
        docs = parse_lines(lines)
        n = 0
        observe, from_dict = self.observe, StepRecord.from_dict
        try:
            for k, line in enumerate(lines):
                try:
                    rec = from_dict(docs[k] if docs is not None else json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue  # one bad record must not stop learning
                observe(idx, rec)
                if rec.step > top:
                    top = rec.step
                n += 1
        finally:
            if top > was:  # the highest step observed (no await in the loop: none reads it)
                self.last_step[idx] = top
        if newest is not None:
            self.seen(idx, newest)  # type: ignore[misc]
        self._learned[idx] = self._learned.get(idx, 0) + n
        self.records += n
        return n

    def _gate(self, idx: int) -> RateGate:
        g = self._gates.get(idx)
        if g is None:
            g = self._gates[idx] = RateGate(self.learn_budget)
        return g

    async def run(self) -> None:
        await poll_forever(self.poll_once, self.interval, "telemetry feed")
