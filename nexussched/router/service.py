"""The live router: an aiohttp service proxying the OpenAI API to a set of engine backends.

Request path: parse and validate the body (OpenAI-style 4xx on bad input), build a RequestInfo (with
per-request SLOs from headers or body), hand a ProxyCall to the dispatcher, which picks a backend
and relays the answer. The default dispatcher asks a RoutingPolicy (the same objects the simulator
runs); other placement modes plug in as Dispatcher subclasses through `MODES`.

Failure handling: a backend that refuses connections is taken out of rotation at once; a request
that has not yet received a response byte is retried once on another backend; a stream that breaks
after it started ends with an SSE error event (the `openai` client raises on it), never silently.
A client that disconnects cancels its handler, which closes the upstream connection, which aborts
the request on the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..aio import serve_app
from ..tokens import message_tokens, text_tokens
from .backends import Backend, BackendRegistry
from .config import RouterSettings
from .errors import APIError, bad_request
from .policies import NoEngineAvailable, RequestInfo, RoutingPolicy, make_policy
from .prom import CONTENT_TYPE, RouterMetrics

log = logging.getLogger("nexussched.router")

SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_TPOT_HEADER = "x-slo-tpot-ms"
PRIORITY_HEADER = "x-priority"
# request headers passed on to the engine (an engine-side planner reads the SLO ones)
FORWARD_HEADERS = (SLO_TTFT_HEADER, SLO_TPOT_HEADER, PRIORITY_HEADER, "x-request-id")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


# ---- request parsing (pure) ------------------------------------------------------------------
def _positive(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not math.isfinite(v):
        raise bad_request(
            f"{what} must be a positive number, got {v!r}", code="invalid_value", param=what
        )
    return float(v)


def _header_num(headers, name: str) -> float | None:
    v = headers.get(name)
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        raise bad_request(
            f"header {name} must be a number, got {v!r}", code="invalid_value"
        ) from None
    return _positive(x, name)


def parse_slo(
    headers, body: dict, default_ttft: float, default_tpot: float
) -> tuple[float, float, int]:
    """(slo_ttft s, slo_tpot s, priority) of a request.

    Headers `x-slo-ttft-ms` / `x-slo-tpot-ms` are milliseconds; body fields `slo_ttft` / `slo_tpot`
    are seconds (as in RequestInfo and traces) and take precedence; `priority` likewise (int).
    """
    ttft = _header_num(headers, SLO_TTFT_HEADER)
    tpot = _header_num(headers, SLO_TPOT_HEADER)
    ttft = ttft / 1000.0 if ttft is not None else default_ttft
    tpot = tpot / 1000.0 if tpot is not None else default_tpot
    if body.get("slo_ttft") is not None:
        ttft = _positive(body["slo_ttft"], "slo_ttft")
    if body.get("slo_tpot") is not None:
        tpot = _positive(body["slo_tpot"], "slo_tpot")
    prio: object = body.get("priority")
    if prio is None:
        h = headers.get(PRIORITY_HEADER)
        if h is not None:
            try:
                prio = int(h)
            except ValueError:
                raise bad_request(
                    f"header {PRIORITY_HEADER} must be an integer, got {h!r}", code="invalid_value"
                ) from None
    if prio is None:
        prio = 0
    if isinstance(prio, bool) or not isinstance(prio, int):
        raise bad_request(
            f"priority must be an integer, got {prio!r}", code="invalid_value", param="priority"
        )
    return ttft, tpot, prio


def with_slo_xargs(body: dict, ttft: float, tpot: float, prio: int) -> bytes:
    """The body to forward when a client stated SLOs: also put them in `vllm_xargs`.

    vLLM ignores unknown top-level fields but hands `vllm_xargs` to the scheduler (as
    SamplingParams.extra_args), which is where the LENS plug-in reads per-request SLOs.
    """
    xargs = dict(body.get("vllm_xargs") or {})
    xargs.setdefault("slo_ttft", ttft)
    xargs.setdefault("slo_tpot", tpot)
    xargs.setdefault("priority", prio)
    body["vllm_xargs"] = xargs
    return json.dumps(body).encode()


def estimate_prompt_tokens(path: str, body: dict) -> int:
    """Prompt size for routing: token-id lists are exact, text is ~4 characters per token."""
    if path == CHAT:
        n = 0
        for m in body["messages"]:
            n += message_tokens(m)
        return max(1, n)
    p = body["prompt"]
    if isinstance(p, str):
        return max(1, text_tokens(p))
    if isinstance(p[0], int):
        return len(p)  # token ids (the first element decides: no per-token work here)
    n = 0
    for x in p:
        n += text_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1
    return max(1, n)


def validate_body(path: str, body: object) -> tuple[str, bool, int | None]:
    """Check the fields the router relies on; returns (model, stream, max_tokens or None)."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise bad_request(
            "you must provide a model parameter", code="missing_required_parameter", param="model"
        )
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string", code="invalid_value", param="model")
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise bad_request("stream must be true or false", code="invalid_value", param="stream")
    max_tokens = None
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad_request(
                f"{key} must be a positive integer, got {v!r}", code="invalid_value", param=key
            )
        max_tokens = v
    if path == CHAT:
        msgs = body.get("messages")
        if msgs is None:
            raise bad_request(
                "you must provide a messages parameter",
                code="missing_required_parameter",
                param="messages",
            )
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs)
        ):
            raise bad_request(
                "messages must be a non-empty list of {role, content} objects",
                code="invalid_value",
                param="messages",
            )
    else:
        p = body.get("prompt")
        if p is None:
            raise bad_request(
                "you must provide a prompt parameter",
                code="missing_required_parameter",
                param="prompt",
            )
        # the first element decides the kind (token ids, texts, id lists); the engine checks the rest
        ok = isinstance(p, str) or (
            isinstance(p, list)
            and p
            and not isinstance(p[0], bool)
            and isinstance(p[0], int | str | list)
        )
        if not ok:
            raise bad_request(
                "prompt must be a string, a list of strings or a list of token ids",
                code="invalid_value",
                param="prompt",
            )
    return model, stream, max_tokens


# ---- the dispatch hook -----------------------------------------------------------------------
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


@dataclass(slots=True)
class Upstream:
    """An upstream response whose first body bytes (or whole body, when not streaming) arrived."""

    resp: aiohttp.ClientResponse
    first: bytes
    idx: int


class BackendFailed(Exception):
    """The backend failed before sending a response byte: the request may go elsewhere."""

    def __init__(self, idx: int, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.idx = idx
        self.reason = reason
        self.refused = refused  # connection refused/unreachable: definitely down


class Dispatcher:
    """How the router places requests. Subclass for other modes (e.g. FastDeploy's local, global
    and splitwise schedulers) and register a factory in MODES; use the Router's primitives:
    `views_for`, `open_upstream` (raises BackendFailed), `relay`, `backend_failed`."""

    router: Router

    async def start(self, router: Router) -> None:
        self.router = router

    async def close(self) -> None:
        return None

    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        raise NotImplementedError


class _Masked:
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


@dataclass(slots=True)
class _Flight:
    """A request between dispatch and first byte, for policies that re-bind (tick() -> Moves)."""

    idx: int
    task: asyncio.Task | None = None
    move_to: int | None = None


class PolicyDispatcher(Dispatcher):
    """Default mode: the policy picks a backend; the request is proxied there.

    Supports the whole RoutingPolicy contract: a policy that `holds` returns None from route() and
    hands requests out through pull(idx); one with a `tick_interval` may return Moves, applied to
    requests that have not yet received a byte (the upstream attempt is cancelled and re-sent).
    """

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self._held: dict[object, asyncio.Future] = {}
        self._flights: dict[object, _Flight] = {}
        self._tasks: list[asyncio.Task] = []

    @classmethod
    def from_settings(cls, settings: RouterSettings, **kwargs: object) -> PolicyDispatcher:
        try:
            return cls(make_policy(settings.policy, **settings.policy_args))
        except TypeError as e:
            raise ValueError(f"bad --policy-arg for {settings.policy!r}: {e}") from None

    async def start(self, router: Router) -> None:
        self.router = router
        p = self.policy
        if p.holds:
            router.registry.on_change.append(lambda i, up: up and self._offer(i))
            self._tasks.append(asyncio.create_task(self._offer_loop(p.tick_interval or 0.05)))
        if p.tick_interval:
            self._tasks.append(asyncio.create_task(self._tick_loop(p.tick_interval)))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    # ---- holding and re-binding ------------------------------------------------------------------
    def _offer(self, idx: int) -> None:
        views = self.router.backends
        now = time.monotonic()
        for info in self.policy.pull(idx, views, now):
            fut = self._held.pop(info.id, None)
            if fut is not None and not fut.done():
                fut.set_result(idx)
            else:  # its client left while it was held: close the policy's books on it
                self.policy.on_finish(info.id, idx, now)

    async def _offer_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self._held:
                for i, b in enumerate(self.router.backends):
                    if b.healthy:
                        self._offer(i)

    async def _tick_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                moves = self.policy.tick(self.router.backends, time.monotonic())
            except Exception as e:  # a policy bug must not stop the router
                log.error("policy tick failed: %r", e)
                continue
            for mv in moves:
                f = self._flights.get(mv.req_id)
                if f is not None and f.idx == mv.src and f.task is not None and not f.task.done():
                    f.move_to = mv.dst
                    f.task.cancel()

    async def _choose(self, call: ProxyCall, tried: list[int]) -> int:
        router = self.router
        views: Sequence = router.views_for(call.model)
        if tried:
            views = [
                _Masked(v._b if isinstance(v, _Masked) else v, i not in tried and v.healthy)
                for i, v in enumerate(views)
            ]
        now = time.monotonic()
        t = time.perf_counter()
        try:
            idx = self.policy.route(call.info, views, now)
        except NoEngineAvailable as e:
            retry = getattr(e, "retry_after", None)
            if retry is not None:  # admission control (PRISM's shed): 429 with Retry-After
                raise APIError(
                    429,
                    str(e),
                    code="slo_unattainable",
                    headers={"Retry-After": str(max(1, math.ceil(retry)))},
                ) from None
            raise router.no_backend(call.model) from None
        router.metrics.observe_decision(time.perf_counter() - t)
        if idx is None:
            fut = asyncio.get_running_loop().create_future()
            self._held[call.info.id] = fut
            for i, b in enumerate(router.backends):
                if b.healthy:
                    self._offer(i)
            try:
                idx = await fut
            finally:
                self._held.pop(call.info.id, None)
        return idx

    # ---- the request -------------------------------------------------------------------------
    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        router = self.router
        policy = self.policy
        rid = call.info.id
        tried: list[int] = []
        spent = 0
        rebinds = policy.tick_interval is not None
        forced: int | None = None
        while True:
            if forced is not None:
                idx, forced = forced, None
            else:
                try:
                    idx = await self._choose(call, tried)
                except APIError as e:
                    raise (router.after_failure(tried[-1]) if tried else e) from None
            b = router.backends[idx]
            b.inflight += 1
            b.sent += 1
            finished = True
            try:
                try:
                    if rebinds:
                        flight = _Flight(idx)
                        self._flights[rid] = flight
                        flight.task = asyncio.ensure_future(router.open_upstream(call, idx))
                        try:
                            up = await flight.task
                        except asyncio.CancelledError:
                            cur = asyncio.current_task()
                            if flight.move_to is None or (cur is not None and cur.cancelling()):
                                raise
                            forced = flight.move_to
                            finished = False
                            router.metrics.moves.inc()
                            continue
                        finally:
                            self._flights.pop(rid, None)
                    else:
                        up = await router.open_upstream(call, idx)
                except BackendFailed as e:
                    router.backend_failed(e)
                    tried.append(idx)
                    if not e.refused:
                        # the backend may have started on it: only `retries` more tries. A refused
                        # connection did no work, so trying every other backend is safe.
                        spent += 1
                        if spent > router.settings.retries:
                            raise router.after_failure(idx) from None
                    router.metrics.retries.inc()
                    continue
                return await router.relay(call, up)
            finally:
                b.inflight -= 1
                if finished:
                    policy.on_finish(rid, idx, time.monotonic())
                    if policy.holds:
                        self._offer(idx)


MODES: dict[str, Callable[..., Dispatcher]] = {
    "policy": PolicyDispatcher.from_settings,
}


def _fastdeploy_mode(name: str) -> Callable[..., Dispatcher]:
    """FastDeploy's scheduler modes (router/modes), imported only when chosen."""

    def factory(settings: RouterSettings, **kw: object) -> Dispatcher:
        from .modes import make_mode_dispatcher

        return make_mode_dispatcher(name, settings, **kw)

    return factory


MODES.update({n: _fastdeploy_mode(n) for n in ("local", "global", "splitwise")})


def _prism_mode(settings: RouterSettings, **kw: object) -> Dispatcher:
    from .prism_live import PrismDispatcher  # PRISM: engine telemetry + Redis state sharing

    return PrismDispatcher.from_settings(settings, **kw)


MODES["prism"] = _prism_mode


def make_dispatcher(settings: RouterSettings) -> Dispatcher:
    try:
        factory = MODES[settings.mode]
    except KeyError:
        raise ValueError(
            f"unknown router mode {settings.mode!r}; known: {', '.join(sorted(MODES))}"
        ) from None
    return factory(settings, **settings.mode_args)


# ---- the service -----------------------------------------------------------------------------
class Router:
    """One router replica: backends, their probe loops, one client session, metrics, handlers."""

    def __init__(self, settings: RouterSettings, dispatcher: Dispatcher | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.registry = BackendRegistry(
            settings.backends,
            health_interval=settings.health_interval,
            scrape_interval=settings.scrape_interval,
            scrape_timeout=settings.scrape_timeout,
            scrape_failures=settings.scrape_failures,
        )
        self.backends = self.registry.backends
        self.metrics = RouterMetrics(lambda: self.backends)
        self.dispatcher = dispatcher or make_dispatcher(settings)
        self.session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout, connect=settings.connect_timeout
        )
        self._bearer = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self._views: dict[str, tuple[int, Sequence]] = {}
        self._known: tuple[int, set[str]] = (-1, set())
        self._failures: dict[int, str] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_route("*", COMPLETIONS, self._completions)
        app.router.add_route("*", CHAT, self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/backends", self._backends)
        for path, handler in getattr(self.dispatcher, "routes", list)():  # a mode's own views
            app.router.add_get(path, handler)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        s = self.settings
        conn = aiohttp.TCPConnector(
            limit=s.max_connections, limit_per_host=0, keepalive_timeout=4.0, ttl_dns_cache=300
        )
        # keepalive below uvicorn's 5 s so a pooled connection is not reused as the server drops it
        self.session = aiohttp.ClientSession(
            connector=conn,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=self._timeout,
        )
        await self.registry.start(self.session)
        await self.dispatcher.start(self)

    async def _cleanup(self, app: web.Application) -> None:
        await self.dispatcher.close()
        await self.registry.stop()
        if self.session is not None:
            await self.session.close()

    # ---- primitives for dispatchers ----------------------------------------------------------
    def views_for(self, model: str) -> Sequence:
        """The engines as a policy sees them for `model`: backends that do not serve it read as
        unhealthy (indices stay those of `self.backends`)."""
        version = self.registry.version
        hit = self._views.get(model)
        if hit is not None and hit[0] == version:
            return hit[1]
        bs = self.backends
        serves = [not b.models or model in b.models for b in bs]
        views: Sequence = (
            bs if all(serves) else [_Masked(b, ok) for b, ok in zip(bs, serves, strict=True)]
        )
        self._views[model] = (version, views)
        return views

    def no_backend(self, model: str) -> APIError:
        n = len(self.backends)
        up = self.registry.healthy_count()
        if up:
            return APIError(
                503,
                f"no healthy backend serves model {model!r} ({up} of {n} backends healthy)",
                code="no_backend",
            )
        return APIError(
            503, f"no backend available: all {n} backends are out of rotation", code="no_backend"
        )

    def backend_failed(self, e: BackendFailed) -> None:
        self._failures[e.idx] = e.reason
        self.metrics.backend_failures.labels(self.backends[e.idx].name).inc()
        if e.refused:
            self.registry.mark_down(e.idx, e.reason)
        else:
            self.registry.suspect(e.idx)

    def after_failure(self, idx: int) -> APIError:
        """The answer when a request's attempts failed: 503 if no backend is left, else 502."""
        why = f"backend {self.backends[idx].name} failed: {self._failures.get(idx, 'unknown')}"
        if not self.registry.healthy_count():
            return APIError(
                503,
                f"no backend available: all {len(self.backends)} backends are "
                f"out of rotation ({why})",
                code="no_backend",
            )
        return APIError(502, why, code="backend_failed")

    def _timed_out(self, b: Backend) -> APIError:
        return APIError(
            504,
            f"backend {b.name} did not answer within {self.settings.request_timeout:g} s",
            code="timeout",
        )

    async def open_upstream(self, call: ProxyCall, idx: int, body: bytes | None = None) -> Upstream:
        """Send the call to backend `idx`; return once the first body bytes (streaming) or the
        whole body arrived. Raises BackendFailed if the backend failed before that."""
        b = self.backends[idx]
        headers = b.headers if not call.forward_headers else {**b.headers, **call.forward_headers}
        assert self.session is not None
        try:
            resp = await self.session.post(
                b.url + call.path, data=call.raw if body is None else body, headers=headers
            )
        except aiohttp.ClientConnectorError as e:
            raise BackendFailed(idx, f"cannot connect: {e.os_error.strerror or e}", True) from None
        except aiohttp.ConnectionTimeoutError as e:
            raise BackendFailed(idx, f"connect timed out: {e}") from None
        except TimeoutError:  # the request's own time limit (aiohttp's timeout errors included)
            raise self._timed_out(b) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise BackendFailed(idx, f"{type(e).__name__}: {e}") from None
        try:
            if call.stream and resp.status == 200:
                first = await resp.content.readany()
                if not first:
                    raise BackendFailed(idx, "stream ended before its first byte")
            else:
                first = await resp.read()
        except TimeoutError:
            resp.close()
            raise self._timed_out(b) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            resp.close()
            raise BackendFailed(idx, f"{type(e).__name__}: {e}") from None
        except BaseException:
            resp.close()
            raise
        return Upstream(resp, first, idx)

    async def relay(self, call: ProxyCall, up: Upstream) -> web.StreamResponse:
        """Answer the client with the upstream response; streams are relayed chunk by chunk."""
        resp = up.resp
        name = self.backends[up.idx].name
        m = self.metrics
        if not (call.stream and resp.status == 200):
            ct = resp.headers.get("Content-Type", "application/json")
            resp.release()
            m.count(name, resp.status)
            m.observe_e2e(name, time.monotonic() - call.t0)
            return web.Response(status=resp.status, body=up.first, headers={"Content-Type": ct})
        m.observe_ttft(name, time.monotonic() - call.t0)
        out = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": resp.headers.get("Content-Type", "text/event-stream"),
                "Cache-Control": "no-cache",
            },
        )
        clean = False
        try:
            await out.prepare(call.request)
            await out.write(up.first)
            content = resp.content
            broke: BaseException | None = None
            while True:
                try:
                    chunk = await content.readany()
                except (
                    TimeoutError,
                    aiohttp.ClientConnectionError,
                    aiohttp.ClientPayloadError,
                    OSError,
                ) as e:
                    broke = e
                    break
                if not chunk:
                    break
                await out.write(chunk)
            if broke is not None:
                if isinstance(broke, TimeoutError):  # slow, not dead: no health consequence
                    err = self._timed_out(self.backends[up.idx])
                else:
                    self.backend_failed(BackendFailed(up.idx, f"{type(broke).__name__}: {broke}"))
                    err = APIError(
                        502,
                        f"backend {name} failed mid-stream: {type(broke).__name__}",
                        code="backend_failed",
                    )
                await out.write(err.sse_event())
                m.count(name, err.status)
            else:
                clean = True
                m.count(name, 200)
                m.observe_e2e(name, time.monotonic() - call.t0)
            await out.write_eof()
        except ConnectionResetError:  # the client went away (when not seen as a cancellation)
            clean = False
            m.count(name, 499)
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # client gone or upstream broken: drop the connection (engine aborts)
        return out

    # ---- handlers ----------------------------------------------------------------------------
    def _auth(self, request: web.Request) -> None:
        if self._bearer is None:
            return
        got = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(got, self._bearer):
            raise APIError(
                401,
                "invalid or missing API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            )

    def _known_models(self) -> set[str]:
        v = self.registry.version
        if self._known[0] != v:
            self._known = (v, self.registry.known_models())
        return self._known[1]

    async def _parse(self, request: web.Request, path: str) -> ProxyCall:
        t0 = time.monotonic()
        if request.method != "POST":
            raise APIError(
                405,
                f"{request.method} is not allowed on {path}; use POST",
                code="method_not_allowed",
            )
        self._auth(request)
        limit = self.settings.max_body_bytes
        cl = request.content_length
        if cl is not None and cl > limit:
            raise APIError(
                413,
                f"request body of {cl} bytes exceeds the limit of {limit} bytes",
                code="request_too_large",
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise APIError(
                413, f"request body exceeds the limit of {limit} bytes", code="request_too_large"
            ) from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"request body is not valid JSON: {e}", code="invalid_json") from None
        model, stream, max_tokens = validate_body(path, body)
        known = self._known_models()
        if known and model not in known:
            raise APIError(
                404,
                f"the model {model!r} does not exist; available: {', '.join(sorted(known))}",
                code="model_not_found",
                param="model",
            )
        s = self.settings
        ttft, tpot, prio = parse_slo(request.headers, body, s.default_slo_ttft, s.default_slo_tpot)
        info = RequestInfo(
            next(self._ids),
            estimate_prompt_tokens(path, body),
            max_tokens or s.default_max_tokens,
            t0,
            ttft,
            tpot,
            prio,
            model,
        )
        h = request.headers
        fwd = {k: h[k] for k in FORWARD_HEADERS if k in h}
        if fwd.keys() - {"x-request-id"} or "slo_ttft" in body or "slo_tpot" in body:
            raw = with_slo_xargs(body, ttft, tpot, prio)
        return ProxyCall(request, path, raw, body, info, stream, model, t0, fwd)

    async def _serve(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            call = await self._parse(request, path)
            return await self.dispatcher.dispatch(call)
        except APIError as e:
            self.metrics.count("none", e.status)
            return e.response()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CHAT)

    async def _models(self, request: web.Request) -> web.Response:
        try:
            self._auth(request)
        except APIError as e:
            return e.response()
        return web.json_response({"object": "list", "data": self.registry.model_cards()})

    async def _health(self, request: web.Request) -> web.Response:
        up = self.registry.healthy_count()
        return web.json_response(
            {
                "status": "ok" if up else "unavailable",
                "healthy_backends": up,
                "backends": len(self.backends),
            },
            status=200 if up else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _backends(self, request: web.Request) -> web.Response:
        return web.json_response({"backends": [b.state() for b in self.backends]})

    async def _not_found(self, request: web.Request) -> web.Response:
        return APIError(
            404, f"no route {request.method} {request.path}", code="not_found"
        ).response()


def create_app(settings: RouterSettings, dispatcher: Dispatcher | None = None) -> web.Application:
    """The router as an aiohttp Application (its Router is at app['router'])."""
    router = Router(settings, dispatcher)
    app = router.app()
    with warnings.catch_warnings():  # a plain string key: app["router"] is the public handle
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["router"] = router
    return app


def run_app(
    app: web.Application, host: str, port: int, what: str, shutdown_timeout: float = 5.0
) -> int:
    """Serve until SIGINT/SIGTERM. A port in use (or any bind error) is a one-line ValueError."""
    return serve_app(app, host, port, what, shutdown_timeout)
