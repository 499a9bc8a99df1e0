"""Backend registry: the engines behind the router, their health and their scraped load.

Each Backend is the live EngineView a policy reads (the contract in router/policies/view.py):
`num_running`, `num_waiting` and `kv_usage` come from the engine's vLLM metrics (scraped every
`scrape_interval`, at `last_scrape`), `block_size` and `num_gpu_blocks` from its
`vllm:cache_config_info`, and `inflight`, `inflight_prompt_tokens` and `inflight_max_tokens` are
the router's own counts. A connection failure takes a backend out of rotation at once; a probe loop brings it back
when `/health` answers again.

Membership is live: `add` brings a backend in (a retired one with the same URL comes back at its
old index), `retire` takes one out for good; it drains (requests in flight finish, no new ones
go there). Indices never shift, because policies and dispatchers address engines by index.
Each backend has a circuit breaker (router/breaker.py) fed by `answered` / `failed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from .breaker import CLOSED, Breaker
from .config import BackendSpec
from .policies.base import RequestInfo
from .policies.view import SCRAPE_PERIOD
from .vllm_metrics import EngineMetrics, parse_vllm_metrics

log = logging.getLogger("nexussched.router")


class Backend:
    """One engine endpoint; implements the policies' EngineView."""

    __slots__ = (
        "spec",
        "name",
        "url",
        "healthy",
        "num_running",
        "num_waiting",
        "kv_usage",
        "block_size",
        "num_gpu_blocks",
        "inflight",
        "inflight_prompt_tokens",
        "inflight_max_tokens",
        "idles",
        "models",
        "model_cards",
        "has_metrics",
        "last_scrape",
        "failures",
        "down_reason",
        "sent",
        "headers",
        "retired",
        "breaker",
    )

    def __init__(self, spec: BackendSpec, breaker: Breaker | None = None) -> None:
        self.set_spec(spec)
        self.healthy = False
        self.num_running = 0
        self.num_waiting = 0
        self.kv_usage = 0.0
        self.block_size: int | None = None  # vllm:cache_config_info, once scraped
        self.num_gpu_blocks: int | None = None
        self.inflight = 0  # the router's count: sent and not finished
        self.inflight_prompt_tokens = 0  # their prompt tokens
        self.inflight_max_tokens = 0  # their declared max_tokens
        self.idles = 0  # times the router's in-flight count here fell to zero
        self.has_metrics = True  # set False when /metrics is missing (not a vLLM backend)
        self.last_scrape = 0.0
        self.failures = 0  # consecutive scrape timeouts
        self.down_reason = "not probed yet"
        self.sent = 0  # requests ever sent here
        self.retired = False  # removed from the router: drains, then is only a tombstone
        self.breaker = breaker or Breaker()

    def set_spec(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.url = spec.url
        self.models: frozenset[str] = frozenset(spec.models)
        self.model_cards: list[dict] = [
            {"id": m, "object": "model", "owned_by": spec.name} for m in spec.models
        ]
        h = {"Content-Type": "application/json"}
        if spec.api_key:
            h["Authorization"] = f"Bearer {spec.api_key}"
        self.headers = h

    def begin(self, info: RequestInfo) -> None:
        """The router sent a request here."""
        self.inflight += 1
        self.inflight_prompt_tokens += info.prompt_tokens
        self.inflight_max_tokens += info.max_tokens
        self.sent += 1

    def end(self, info: RequestInfo) -> None:
        """A request sent here finished (or failed, or moved away)."""
        self.inflight -= 1
        if self.inflight == 0:
            self.idles += 1
        self.inflight_prompt_tokens -= info.prompt_tokens
        self.inflight_max_tokens -= info.max_tokens

    def state(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "healthy": self.healthy,
            "num_running": self.num_running,
            "num_waiting": self.num_waiting,
            "kv_usage": self.kv_usage,
            "inflight": self.inflight,
            "inflight_prompt_tokens": self.inflight_prompt_tokens,
            "inflight_max_tokens": self.inflight_max_tokens,
            "block_size": self.block_size,
            "num_gpu_blocks": self.num_gpu_blocks,
            "sent": self.sent,
            "models": sorted(self.models),
            "down_reason": None if self.healthy else self.down_reason,
            "state": self.lifecycle,
            "circuit": self.breaker.state,
            "circuit_opens": self.breaker.opens,
        }

    @property
    def lifecycle(self) -> str:
        """active, draining (removed, requests still in flight) or removed."""
        if not self.retired:
            return "active"
        return "draining" if self.inflight > 0 else "removed"


class BackendRegistry:
    """Holds the backends and runs one probe/scrape loop per backend on the router's session."""

    def __init__(
        self,
        specs: list[BackendSpec],
        health_interval: float = 1.0,
        scrape_interval: float = SCRAPE_PERIOD,
        scrape_timeout: float = 2.0,
        scrape_failures: int = 3,
        breaker_failures: int = 5,
        breaker_cooldown: float = 10.0,
    ) -> None:
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self.backends = [Backend(s, self._breaker()) for s in specs]
        self.health_interval = health_interval
        self.scrape_interval = scrape_interval
        self.scrape_timeout = aiohttp.ClientTimeout(total=scrape_timeout)
        self.scrape_failures = scrape_failures
        self.version = 0  # bumped whenever health or model sets change
        self.on_change: list[Callable[[int, bool], None]] = []  # (index, healthy) listeners
        # (index, backend, parsed metrics, monotonic time) after every successful scrape
        self.on_scrape: list[Callable[[int, Backend, EngineMetrics, float], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[int, asyncio.Task] = {}  # probe/scrape loop per backend index
        self._checking: set[int] = set()

    def _breaker(self) -> Breaker:
        return Breaker(self.breaker_failures, self.breaker_cooldown)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self, session: aiohttp.ClientSession, first_probe_timeout: float = 3.0) -> None:
        """Probe every backend once (so the router starts knowing who is up), then loop."""
        self._session = session
        await asyncio.wait(
            [asyncio.ensure_future(self._probe(i)) for i in range(len(self.backends))],
            timeout=first_probe_timeout,
        )
        for b in self.backends:  # once each, at start; later changes are logged as they happen
            if not b.healthy:
                why = b.down_reason or f"no answer within {first_probe_timeout:g} s"
                who = b.name if b.name in b.url else f"{b.name} ({b.url})"
                log.warning("backend %s unreachable at start: %s; probing it every %g s",
                            who, why, self.health_interval)  # fmt: skip
        self._tasks = {i: asyncio.create_task(self._loop(i)) for i in range(len(self.backends))}

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks = {}
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    # ---- membership ----------------------------------------------------------------------------
    def listed(self) -> list[Backend]:
        """Backends that are members or still draining (what /backends and /metrics show)."""
        return [b for b in self.backends if b.lifecycle != "removed"]

    def find(self, key: str) -> int | None:
        """Index of the member (not retired) backend named `key` or at URL `key`."""
        for i, b in enumerate(self.backends):
            if not b.retired and key in (b.name, b.url):
                return i
        return None

    def check_new(self, spec: BackendSpec) -> None:
        """ValueError if a member backend has the spec's URL or name."""
        for b in self.backends:
            if not b.retired and (b.url == spec.url or b.name == spec.name):
                what = "URL" if b.url == spec.url else "name"
                raise ValueError(f"a backend with {what} {getattr(spec, what.lower())} is present")

    def add(self, spec: BackendSpec) -> int:
        """Bring a backend in (probed at once; in rotation when /health answers). A retired one
        at the same URL comes back at its old index. ValueError if the URL or name is taken."""
        self.check_new(spec)
        idx = next(
            (i for i, b in enumerate(self.backends) if b.retired and b.url == spec.url), None
        )
        if idx is None:
            idx = len(self.backends)
            self.backends.append(Backend(spec, self._breaker()))
        else:  # the same object: requests still draining from it keep their counts
            b = self.backends[idx]
            b.set_spec(spec)
            b.retired = False
            b.breaker = self._breaker()
            b.down_reason = "not probed yet"
        self.version += 1
        log.warning("backend %s (%s) added", spec.name, spec.url)
        if self._session is not None:
            self._tasks[idx] = asyncio.create_task(self._join(idx))
        return idx

    async def _join(self, idx: int) -> None:
        await self._probe(idx)
        await self._loop(idx)

    def retire(self, idx: int) -> None:
        """Take a backend out for good: no new requests; those in flight finish (drain)."""
        b = self.backends[idx]
        if b.retired:
            return
        t = self._tasks.pop(idx, None)
        if t is not None:
            t.cancel()
        self.mark_down(idx, "removed")
        b.retired = True
        b.down_reason = "removed"
        self.version += 1
        log.warning("backend %s removed (%d requests in flight drain)", b.name, b.inflight)

    # ---- the circuit breaker -------------------------------------------------------------------
    def sending(self, idx: int) -> None:
        """A request is about to go to backend idx: a half-open backend's trial is this one,
        so it leaves rotation until the trial's outcome is known."""
        br = self.backends[idx].breaker
        if br.state == "half_open" and not br.trial:
            br.trial = True
            self.mark_down(idx, "circuit half-open: trial request in flight")

    def answered(self, idx: int, status: int) -> None:
        """Backend idx answered with HTTP `status`: 5xx is a failure, anything else an answer."""
        if status >= 500:
            self.failed(idx, f"answered {status}")
            return
        b = self.backends[idx]
        br = b.breaker
        if br.state == CLOSED:  # the usual answer: br.success() without the call
            br.failures = 0
            return
        if br.success():
            log.warning("backend %s: circuit closed (trial request answered)", b.name)
            if not b.retired:
                self._mark_up(idx)

    def failed(self, idx: int, reason: str) -> None:
        """Backend idx failed a request (connection failure, 5xx, broken stream)."""
        b = self.backends[idx]
        br = b.breaker
        if br.failure(time.monotonic()):
            why = f"circuit open after {br.failures} consecutive failures (last: {reason})"
            if b.healthy:
                self.mark_down(idx, why)
            else:
                b.down_reason = why
                log.warning("backend %s: %s", b.name, why)

    # ---- state changes -------------------------------------------------------------------------
    def mark_down(self, idx: int, reason: str) -> None:
        b = self.backends[idx]
        if not b.healthy:
            return
        b.healthy = False
        b.down_reason = reason
        b.num_running = b.num_waiting = 0
        b.kv_usage = 0.0
        self.version += 1
        log.warning("backend %s out of rotation: %s", b.name, reason)
        for f in self.on_change:
            f(idx, False)

    def _mark_up(self, idx: int) -> None:
        b = self.backends[idx]
        if b.healthy or b.retired or b.breaker.blocks:
            return
        b.healthy = True
        b.failures = 0
        b.down_reason = ""
        self.version += 1
        log.warning("backend %s in rotation", b.name)
        for f in self.on_change:
            f(idx, True)

    def suspect(self, idx: int) -> None:
        """A request to this backend broke in a way a stale pooled connection also could (server
        disconnected, reset): check it now instead of waiting for the next scrape."""
        if idx in self._checking or self._session is None:
            return
        self._checking.add(idx)
        asyncio.ensure_future(self._check_now(idx))

    async def _check_now(self, idx: int) -> None:
        b = self.backends[idx]
        try:
            async with self._session.get(b.url + "/health", timeout=self.scrape_timeout) as r:
                ok = r.status == 200
                why = f"/health answered {r.status}"
        except TimeoutError:
            ok, why = True, ""  # slow is not dead; the scrape loop counts timeouts
        except (aiohttp.ClientError, OSError) as e:
            ok, why = False, f"health check failed: {type(e).__name__}"
        finally:
            self._checking.discard(idx)
        if not ok:
            self.mark_down(idx, why)

    async def watch_drain(self, busy: Callable[[int], int], every: float = 0.25) -> None:
        """While the router drains (SIGTERM), until cancelled: every `every` s, check each backend
        in rotation with requests in flight (`busy(idx) > 0`) and take out of rotation one whose
        /health does not answer within the scrape timeout or fails, which stops its requests. A
        timeout counts at once here (the scrape loop waits for three): a drain waits only for
        requests that can still finish, and those on a hung or dead engine never do (they held
        the drain for its whole timeout)."""
        while True:
            idxs = [i for i, b in enumerate(self.backends) if b.healthy and busy(i)]
            await asyncio.gather(*(self._check_draining(i) for i in idxs))
            await asyncio.sleep(every)

    async def _check_draining(self, idx: int) -> None:
        b = self.backends[idx]
        assert self._session is not None
        try:
            async with self._session.get(b.url + "/health", timeout=self.scrape_timeout) as r:
                why = "" if r.status == 200 else f"/health answered {r.status}"
        except TimeoutError:
            why = f"no answer to /health within {self.scrape_timeout.total:g} s"
        except (aiohttp.ClientError, OSError) as e:
            why = f"health check failed: {type(e).__name__}"
        if why:
            self.mark_down(idx, why + " while the router drained")

    def healthy_count(self) -> int:
        return sum(1 for b in self.backends if b.healthy)

    def member_count(self) -> int:
        return sum(1 for b in self.backends if not b.retired)

    def model_cards(self) -> list[dict]:
        """Union of the members' models (first card seen for each id), healthy or not."""
        seen: dict[str, dict] = {}
        for b in self.backends:
            if not b.retired:
                for c in b.model_cards:
                    seen.setdefault(c["id"], c)
        return list(seen.values())

    def known_models(self) -> set[str]:
        out: set[str] = set()
        for b in self.backends:
            if not b.retired:
                out |= b.models
        return out

    # ---- probing -------------------------------------------------------------------------------
    async def _loop(self, idx: int) -> None:
        b = self.backends[idx]
        while True:
            await asyncio.sleep(self.scrape_interval if b.healthy else self.health_interval)
            try:
                if b.healthy:
                    await self._scrape(idx)
                else:
                    await self._probe(idx)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let one backend's oddity kill its loop
                log.warning("backend %s: probe error %r", b.name, e)

    async def _probe(self, idx: int) -> bool:
        """GET /health, then the model list and a first scrape; mark up on success. A backend
        whose breaker is open waits out its cooldown first (then half-open: one trial)."""
        b = self.backends[idx]
        s = self._session
        assert s is not None
        br = b.breaker
        if br.state == "open" and not br.cooled(time.monotonic()):
            return False
        if br.state == "half_open" and br.trial:
            return False  # the trial request decides
        try:
            async with s.get(b.url + "/health", timeout=self.scrape_timeout) as r:
                if r.status != 200:
                    b.down_reason = f"/health answered {r.status}"
                    return False
            if not b.spec.models:
                async with s.get(
                    b.url + "/v1/models", headers=b.headers, timeout=self.scrape_timeout
                ) as r:
                    if r.status == 200:
                        data = await r.json(content_type=None)
                        cards = [
                            c for c in data.get("data", []) if isinstance(c, dict) and "id" in c
                        ]
                        if {c["id"] for c in cards} != set(b.models):
                            self.version += 1
                        b.model_cards = cards
                        b.models = frozenset(c["id"] for c in cards)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            b.down_reason = f"probe failed: {type(e).__name__}: {e}"
            return False
        if b.has_metrics:
            await self._scrape(idx, probing=True)
        self._mark_up(idx)
        return True

    async def _scrape(self, idx: int, probing: bool = False) -> None:
        b = self.backends[idx]
        s = self._session
        assert s is not None
        if not b.has_metrics:
            # no vLLM metrics: /health is the liveness check
            try:
                async with s.get(b.url + "/health", timeout=self.scrape_timeout) as r:
                    ok = r.status == 200
            except TimeoutError:
                self._timeout(idx)
                return
            except (aiohttp.ClientError, OSError) as e:
                self.mark_down(idx, f"health check failed: {type(e).__name__}")
                return
            if not ok:
                self.mark_down(idx, f"/health answered {r.status}")
            return
        try:
            async with s.get(b.url + "/metrics", timeout=self.scrape_timeout) as r:
                if r.status == 404:
                    b.has_metrics = False
                    return
                text = await r.text() if r.status == 200 else ""
        except TimeoutError:
            if not probing:
                self._timeout(idx)
            return
        except (aiohttp.ClientError, OSError) as e:
            if not probing:
                self.mark_down(idx, f"scrape failed: {type(e).__name__}")
            return
        b.failures = 0
        m = parse_vllm_metrics(text) if text else None
        if m is None:
            if text:
                b.has_metrics = False
            return
        b.num_running = m.num_running
        b.num_waiting = m.num_waiting
        b.kv_usage = m.kv_usage
        if m.num_gpu_blocks:
            b.block_size = m.block_size
            b.num_gpu_blocks = m.num_gpu_blocks
        b.last_scrape = time.monotonic()
        for f in self.on_scrape:
            f(idx, b, m, b.last_scrape)

    def _timeout(self, idx: int) -> None:
        b = self.backends[idx]
        b.failures += 1
        if b.failures >= self.scrape_failures:
            self.mark_down(idx, f"{b.failures} scrapes timed out")
