"""The live router's HTTP service: an aiohttp app proxying the OpenAI API to engine backends.

Request path: parse and validate the body (router/requests.py; OpenAI-style 4xx on bad input),
build a RequestInfo (with per-request SLOs from headers or body), hand a ProxyCall to the
dispatcher (router/dispatch.py is the interface; router/compose.py picks the dispatcher from
settings), which picks a backend and calls back into the Router's primitives to relay the answer.

Failure handling: a backend that refuses connections is taken out of rotation at once; a request
that has not yet received a response byte is retried once on another backend; a stream that breaks
after it started ends with an SSE error event (the `openai` client raises on it), never silently.
A client that disconnects cancels its handler, which closes the upstream connection, which aborts
the request on the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Sequence

import aiohttp
from aiohttp import web

from ..tokens import DEFAULT_BLOCK_SIZE, prompt_block_hashes
from .access_log import access_line, flush_access, write_access
from .access_log import log as access_log
from .admission import context_refusal, implied_max_tokens, largest_max_model_len
from .auth import AccessPolicy
from .backends import BackendRegistry
from .config import RouterSettings
from .dispatch import BackendFailed, Dispatcher, MaskedView, ProxyCall, StreamWatch
from .errors import APIError, bad_request
from .h1client import H1Pool
from .h1types import Timeouts
from .hygiene import Guard
from .inflight import BackendRuns
from .lean_response import WholeResponse
from .membership import BackendsAdmin, BackendsFileWatcher
from .policies import RequestInfo
from .prom import CONTENT_TYPE, RouterMetrics
from .raw_http import RawRequest
from .request_ids import REQUEST_ID, RequestIds
from .requests import (
    CHAT,
    COMPLETIONS,
    FORWARD_HEADERS,
    estimate_prompt_tokens,
    parse_slo,
    validate_body,
    with_slo_xargs,
)
from .upstream import UpstreamIO
from .validation import OFFLOAD_BYTES, decode_json, forward_headers, parse_json, read_body

log = logging.getLogger("nexussched.router")


# ---- the service -----------------------------------------------------------------------------
class Router(UpstreamIO):
    """One router replica: backends, their probe loops, one client session, metrics, handlers."""

    def __init__(self, settings: RouterSettings, dispatcher: Dispatcher) -> None:
        settings.validate()
        self.settings = settings
        self.registry = BackendRegistry(
            settings.backends,
            health_interval=settings.health_interval,
            scrape_interval=settings.scrape_interval,
            scrape_timeout=settings.scrape_timeout,
            scrape_failures=settings.scrape_failures,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown=settings.breaker_cooldown,
        )
        self.backends = self.registry.backends
        self.metrics = RouterMetrics(self.registry.listed)
        self.admin = BackendsAdmin(self.registry, self._auth, self._admin_refusal)
        self.watcher = (
            BackendsFileWatcher(
                self.registry,
                settings.backends_file,
                settings.backends_file_poll,
                self._membership_refusal,
            )
            if settings.backends_file
            else None
        )
        if settings.workers > 1 and self.watcher is not None:
            self.admin.shared = self.watcher  # several workers meet in the file
        self._watch_task: asyncio.Task | None = None
        self.dispatcher = dispatcher
        self.session: aiohttp.ClientSession | None = None
        self.watch: StreamWatch | None = None  # sees relayed streams (PRISM's observed learning)
        self._ids = itertools.count(1)
        self._rids = RequestIds()
        self._timeouts = Timeouts(settings.request_timeout, settings.connect_timeout)
        # streams also give up after idle_timeout without a byte (a stalled engine); a
        # non-streaming answer legitimately sends nothing until it is done
        self._stream_timeouts = Timeouts(
            settings.request_timeout, settings.connect_timeout, settings.idle_timeout
        )
        self.pool: H1Pool | None = None  # the data plane's keep-alive connections
        self.runs = BackendRuns()  # requests running on each backend (stopped when it leaves)
        self.registry.on_change.append(self._backend_changed)
        self.access = AccessPolicy(settings.api_key, settings.metrics_api_key)
        self.guard = Guard(self.access, lambda: self.metrics.count("none", 499))
        self._views: dict[str, tuple[int, Sequence]] = {}
        self._known: tuple[int, set[str]] = (-1, set())
        self._failures: dict[int, str] = {}
        self._heads: dict = {}  # (backend url, path) -> request head (upstream.py)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self.guard.middleware]
        )
        app.router.add_route("*", COMPLETIONS, self._completions)
        app.router.add_route("*", CHAT, self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_routes(self.admin.routes())
        for path, handler in getattr(self.dispatcher, "routes", list)():  # a mode's own views
            app.router.add_get(path, handler)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_response_prepare.append(self._prepare_response)  # one hook: one await per answer
        if getattr(self.dispatcher, "relays", False):
            # the two API routes skip aiohttp's URL dispatch and middleware chain (see _handle)
            self._app_handle = app._handle
            app._handle = self._handle  # type: ignore[method-assign]  # read by AppRunner/TestServer
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """The app's request entry point: POST /v1/completions and /v1/chat/completions go straight
        to the guard and their handler (no URL resolution, middleware chain or get_event_loop()
        per request: aiohttp's Application._handle costs a getpid() system call on Python 3.11);
        every other request (and one with an Expect header) takes the app's usual way. The answer
        gets the request id here, as on_response_prepare gives it on the usual way (a relayed
        stream gets it, and is kept for the drain, in relay())."""
        path = request.path
        if (path == COMPLETIONS or path == CHAT) and "Expect" not in request.headers:
            out = await self.guard.middleware(
                request, self._completions if path == COMPLETIONS else self._chat
            )
            if not out.prepared:
                rid = request.get(REQUEST_ID)
                if rid:
                    out.headers["x-request-id"] = rid
            return out
        return await self._app_handle(request)

    def serve_raw(self, request: RawRequest) -> Awaitable[web.StreamResponse]:
        """The raw server's entry (raw_server.py): the guard's checks, then _serve (the path is
        exactly one of the two API routes). The answer's request id is added as it is written
        (raw_http.answer_bytes), a stream's with its head (raw_stream.py)."""
        return self.guard.middleware(request, self._serve)  # type: ignore[arg-type]

    async def _drain(self, app: web.Application) -> None:
        # an engine that stops answering meanwhile has its requests stopped (they cannot finish)
        watch = asyncio.create_task(self.registry.watch_drain(self.runs.count))
        try:
            stopped = await self.guard.drain(self.settings.drain_timeout)
        finally:
            watch.cancel()
        if stopped:
            log.warning(
                "drain: %d requests still running after %g s were stopped",
                stopped,
                self.settings.drain_timeout,
            )

    async def _startup(self, app: web.Application) -> None:
        s = self.settings
        self.guard.loop = self.runs.loop = asyncio.get_running_loop()
        # requests go through the lean pool (h1client.py); probes, scrapes and feeds through an
        # aiohttp session. Keep-alive below uvicorn's 5 s so a pooled connection is not reused
        # as the server drops it
        self.pool = H1Pool(limit=s.max_connections)
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4.0)
        # no engine may compress what it sends (aiohttp asks for gzip/deflate unless told; a
        # prometheus_client /metrics then gzips)
        self.session = aiohttp.ClientSession(
            connector=conn,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=s.request_timeout, connect=s.connect_timeout),
            headers={"Accept-Encoding": "identity"},
        )
        await self.registry.start(self.session)
        await self.dispatcher.start(self)
        if self.watcher is not None:
            self.watcher.start()
            self._watch_task = asyncio.create_task(self.watcher.run())

    async def _cleanup(self, app: web.Application) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.dispatcher.close()
        await self.registry.stop()
        if self.session is not None:
            await self.session.close()
        if self.pool is not None:
            self.pool.close()
        flush_access()

    def _backend_changed(self, idx: int, up: bool) -> None:
        """A backend found dead (health or scrapes failing) stops the requests running on it. One
        removed by an operator drains instead, and a circuit breaker's decisions (open after
        failed answers, half-open for a trial request) leave requests in flight alone."""
        if up:
            return
        why = self.backends[idx].down_reason or "out of rotation"
        if why == "removed" or why.startswith("circuit"):
            return
        n = self.runs.stop(idx, why)
        if n:
            log.warning(
                "backend %s left rotation: stopping its %d requests", self.backends[idx].name, n
            )

    # ---- primitives for dispatchers ----------------------------------------------------------
    def views_for(self, model: str) -> Sequence:
        """The engines as a policy sees them for `model`: backends that do not serve it read as
        unhealthy (indices stay those of `self.backends`)."""
        version = self.registry.version
        hit = self._views.get(model)
        if hit is not None and hit[0] == version:
            return hit[1]
        bs = self.backends
        known = self._known_models()
        if not known:
            return bs  # no backend names its models: all serve every one
        serves = [not b.models or model in b.models for b in bs]
        views = bs if all(serves) else [MaskedView(b, ok) for b, ok in zip(bs, serves, strict=True)]
        if any(serves) and model in known:  # bounded by the backends' lists (a client's string
            if len(self._views) > 4 * len(known) + 16:  # keys nothing)
                self._views.clear()  # stale versions of renamed models
            self._views[model] = (version, views)
        return views

    def no_backend(self, model: str) -> APIError:
        n = self.registry.member_count()
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
        self.registry.failed(e.idx, e.reason)
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
                f"no backend available: all {self.registry.member_count()} backends are "
                f"out of rotation ({why})",
                code="no_backend",
            )
        return APIError(502, why, code="backend_failed")

    # ---- handlers ----------------------------------------------------------------------------
    def _auth(self, request: web.Request) -> None:
        """The API key check (the middleware applies it to every path; the membership admin
        also calls it for its own routes)."""
        if not self.access.authorized(request):
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

    async def _parse(self, request: web.Request, path: str, t0: float) -> ProxyCall:
        if request.method != "POST":
            raise APIError(
                405,
                f"{request.method} is not allowed on {path}; use POST",
                code="method_not_allowed",
            )
        s = self.settings
        if request.__class__ is RawRequest:  # read by the raw server, or refused unread
            if request.refusal is not None:
                raise request.refusal
            raw = request.body
        else:
            raw = await read_body(request, s.max_body_bytes, s.body_timeout)
        # parsed here, or on a worker thread when large (validation.parse_json)
        body = decode_json(raw) if len(raw) <= OFFLOAD_BYTES else await parse_json(raw)
        return self._call(request, path, t0, raw, body)

    def _call(
        self, request: web.Request, path: str, t0: float, raw: bytes, body: object
    ) -> ProxyCall:
        """The ProxyCall of a parsed body (validated; OpenAI-style 4xx APIError otherwise)."""
        s = self.settings
        model, stream, max_tokens = validate_body(path, body)
        assert isinstance(body, dict)  # (validate_body checked it)
        known = self._known_models()
        if known and model not in known:
            raise APIError(
                404,
                f"the model {model!r} does not exist; available: {', '.join(sorted(known))}",
                code="model_not_found",
                param="model",
            )
        ttft, tpot, prio = parse_slo(request.headers, body, s.default_slo_ttft, s.default_slo_tpot)
        policy = getattr(self.dispatcher, "policy", None)
        prefix: tuple[int, ...] = ()
        if getattr(policy, "uses_prefix", False):
            # the prompt's blocks as the engines' prefix caches name them (nexussched/tokens.py)
            prefix = prompt_block_hashes(body, path == CHAT, DEFAULT_BLOCK_SIZE)
        prompt_tokens = estimate_prompt_tokens(path, body)
        if max_tokens is None:  # what vLLM will allow it: the policies and admission see that
            mml = largest_max_model_len(self.backends, model)
            max_tokens = implied_max_tokens(path == CHAT, prompt_tokens, mml, s.default_max_tokens)
        info = RequestInfo(
            next(self._ids),
            prompt_tokens,
            max_tokens,
            t0,
            ttft,
            tpot,
            prio,
            model,
            prefix_hashes=prefix,
        )
        why = context_refusal(self.backends, model, info.prompt_tokens, info.max_tokens)
        if why is not None:
            raise bad_request(why, code="context_length_exceeded", param="messages")
        h = request.headers
        fwd = forward_headers(h, FORWARD_HEADERS)
        if fwd.keys() - {"x-request-id"} or "slo_ttft" in body or "slo_tpot" in body:
            raw = with_slo_xargs(body, ttft, tpot, prio)
        return ProxyCall(request, path, raw, body, info, stream, model, t0, fwd)

    async def _serve(self, request: web.Request, path: str | None = None) -> web.StreamResponse:
        t0 = time.monotonic()
        if path is None:
            path = request.path
        call: ProxyCall | None = None
        status = 499  # unless answered: the client left (the handler was cancelled)
        try:
            rid = self._rids.of(request)
            if request.__class__ is RawRequest and not request.refusal:
                raw = request.body  # all here: no coroutine to read it
                if len(raw) <= OFFLOAD_BYTES:
                    call = self._call(request, path, t0, raw, decode_json(raw))
                else:
                    call = self._call(request, path, t0, raw, await parse_json(raw))
            else:
                call = await self._parse(request, path, t0)
            call.request_id = rid
            call.forward_headers["x-request-id"] = rid
            out = await self.dispatcher.dispatch(call)
            status = out._w_status if out.__class__ is WholeResponse else out.status
            if call.client_gone:
                status = 499
            return out
        except APIError as e:
            self.metrics.count("none", e.status)
            status = e.status
            return e.response()
        finally:
            if self.settings.access_log and access_log.isEnabledFor(logging.INFO):
                self._log_access(request, call, status, t0)

    def _log_access(
        self, request: web.Request, call: ProxyCall | None, status: int, t0: float
    ) -> None:
        e2e = time.monotonic() - t0
        if call is None:
            rid = request.get(REQUEST_ID, "")
            line = access_line(rid, "", "", status, None, e2e, None, False)
        else:
            ttft = call.ttft if call.ttft is not None else (e2e if status == 200 else None)
            line = access_line(
                call.request_id, call.model, call.backend, status, ttft, e2e, call.tokens,
                call.stream,
            )  # fmt: skip
        write_access(line)

    async def _prepare_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer carries the request's id (the client's x-request-id, or one made); the
        guard keeps the response to end it cleanly on shutdown."""
        rid = request.get(REQUEST_ID)
        if rid:
            response.headers["x-request-id"] = rid
        await Guard.remember_stream(request, response)

    def _admin_refusal(self) -> str | None:
        if self.settings.workers > 1 and self.watcher is None:  # a request reaches one worker
            return (
                f"with --workers {self.settings.workers} a change here would reach one worker; "
                "pass --backends-file FILE: POST and DELETE /backends then write the change into "
                "it and every worker applies it"
            )
        return self._membership_refusal()

    def _membership_refusal(self) -> str | None:
        if getattr(self.dispatcher, "membership", False):
            return None
        return (
            f"backends cannot join or leave while running in mode {self.settings.mode!r} "
            "(its nodes are fixed at start); restart the router to change them"
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CHAT)

    async def _models(self, request: web.Request) -> web.Response:
        try:
            self._auth(request)
        except APIError as e:
            return e.response()
        if not self.registry.healthy_count():
            return APIError(
                503,
                f"no healthy backend: all {len(self.backends)} backends are out of rotation "
                "(see GET /backends)",
                code="no_healthy_backend",
            ).response()
        return web.json_response({"object": "list", "data": self.registry.model_cards()})

    async def _health(self, request: web.Request) -> web.Response:
        """Liveness (open); the backend counts only with the API key when one is set."""
        if self.access.api_key and not self.access.authorized(request):
            return web.json_response({"status": "ok"})
        up = self.registry.healthy_count()
        return web.json_response(
            {
                "status": "ok" if up else "unavailable",
                "healthy_backends": up,
                "backends": self.registry.member_count(),
                "worker": os.getpid(),  # which of --workers answered
            },
            status=200 if up else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _not_found(self, request: web.Request) -> web.Response:
        return APIError(
            404, f"no route {request.method} {request.path}", code="not_found"
        ).response()
