"""Where the HTTP service and the dispatchers meet: the one interface both sides import.

The service (router/service.py) parses a request into a ProxyCall and hands it to a Dispatcher; a
dispatcher (the policy dispatcher, PRISM's, FastDeploy's local / global / splitwise modes) places it
using the primitives of `RouterCore` (open_upstream, relay, backend_failed, ...). Neither side imports
the other; router/compose.py wires them together from settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import web

from .backends import Backend, BackendRegistry
from .config import RouterSettings
from .errors import APIError
from .h1response import H1Response
from .inflight import BackendRuns
from .policies import RequestInfo
from .prom import RouterMetrics


@dataclass(slots=True)
class ProxyCall:
    """One client request, parsed: what a dispatcher needs to place and forward it."""

    request: web.Request
    path: str  # /v1/completions or /v1/chat/completions
    raw: bytes  # the body as received (forwarded unchanged)
    body: dict
    info: RequestInfo
    stream: bool
    model: str
    t0: float  # receipt, time.monotonic()
    forward_headers: dict = field(default_factory=dict)
    # filled while it is served, for the access log
    request_id: str = ""
    backend: str = ""  # the backend that answered
    ttft: float | None = None  # seconds from receipt to the first byte sent to the client
    tokens: int | None = None  # completion tokens (usage), else streamed token events
    complete: bool = False  # the whole answer went through (then `tokens` is its length)
    client_gone: bool = False  # the client left mid-answer (logged as 499, as its metric is)
    # While it waits for its first byte, for a dispatcher that re-binds (policy_dispatch.py): the
    # backend it was sent to, the task serving it (a move cancels it) and where a move sends it
    # (kept here, not in a record of its own: one object fewer per request)
    placed: int = -1
    task: asyncio.Task | None = None
    move_to: int | None = None


@dataclass(slots=True)
class Upstream:
    """An upstream response whose first body bytes (or whole body, when not streaming) arrived."""

    resp: H1Response  # status, content_type, read(), readany(), release(), close()
    first: bytes
    idx: int


class BackendFailed(Exception):
    """The backend failed before sending a response byte: the request may go elsewhere."""

    def __init__(self, idx: int, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.idx = idx
        self.reason = reason
        self.refused = refused  # connection refused/unreachable: definitely down


class StreamWatch(Protocol):
    """Sees every streamed request the router relays: sent to engine `idx`, each chunk as it
    arrives, done (finished, failed or moved). Called on the request path: constant time each."""

    def sent(self, idx: int, rid: object, prompt: int, t: float) -> None: ...

    def chunk(self, idx: int, rid: object, t: float, data: bytes) -> None: ...

    def done(self, idx: int, rid: object, t: float) -> None: ...


class RouterCore(Protocol):
    """What a dispatcher may use of the router replica that runs it (router/service.py's Router)."""

    settings: RouterSettings
    watch: StreamWatch | None
    registry: BackendRegistry
    backends: list[Backend]
    metrics: RouterMetrics
    session: aiohttp.ClientSession | None
    runs: BackendRuns  # requests running on each backend; stopped when it leaves rotation

    def views_for(self, model: str) -> Sequence: ...

    def no_backend(self, model: str) -> APIError: ...

    def backend_failed(self, e: BackendFailed) -> None: ...

    def after_failure(self, idx: int) -> APIError: ...

    async def open_upstream(
        self, call: ProxyCall, idx: int, body: bytes | None = None
    ) -> Upstream: ...

    async def relay(self, call: ProxyCall, up: Upstream) -> web.StreamResponse: ...


class Dispatcher:
    """How the router places requests. Subclass for other modes (e.g. FastDeploy's local, global
    and splitwise schedulers) and register a factory in compose.MODES; use the router's
    primitives (RouterCore): `views_for`, `open_upstream` (raises BackendFailed), `relay`,
    `backend_failed`."""

    router: RouterCore
    # whether backends may join and leave while it runs (router/membership.py)
    membership: bool = False
    # whether every answer it returns is relay()'s or an APIError's (none prepares its own stream):
    # then the API routes take the service's short way past aiohttp's dispatch (service.py)
    relays: bool = False

    async def start(self, router: RouterCore) -> None:
        self.router = router

    async def close(self) -> None:
        return None

    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        raise NotImplementedError


class MaskedView:
    """An engine view with `healthy` forced off (backend not serving the model, or already tried)."""

    __slots__ = ("_b", "_ok")

    def __init__(self, b: Backend, ok: bool) -> None:
        self._b = b
        self._ok = ok

    @property
    def healthy(self) -> bool:
        return self._ok and self._b.healthy

    def __getattr__(self, name: str):
        return getattr(self._b, name)
