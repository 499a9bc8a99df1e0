"""The router's upstream side (a mixin of service.Router): sending a call to a backend until its
first bytes arrive (`open_upstream`, raising BackendFailed when the request may go elsewhere)
and relaying the answer to the client (`relay`; streams chunk by chunk, a break mid-stream ends
with an SSE error event). Calls go through the lean keep-alive client of router/h1client.py."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .access_log import token_events, usage_tokens
from .backends import Backend, BackendRegistry
from .config import RouterSettings
from .dispatch import BackendFailed, ProxyCall, StreamWatch, Upstream
from .errors import APIError
from .h1client import H1Pool
from .h1types import ConnectFailed, ConnectTimeout, IdleTimeout, Target, Timeouts
from .hygiene import STREAM_KEY
from .lean_response import WholeResponse
from .prom import RouterMetrics
from .raw_http import RawRequest
from .raw_stream import RawStream


class _EventStream(web.StreamResponse):
    """A stream relayed on aiohttp's server (a connection the raw server handed over, or a
    router served by aiohttp alone): its headers go out with the first chunk, in one write
    (aiohttp's StreamResponse otherwise sends them alone at prepare()). On the raw server a
    stream is a raw_stream.RawStream instead."""

    _send_headers_immediately = False


_HEADS_KEPT = 256  # request heads kept (two paths per backend; cleared past this)


class UpstreamIO:
    """open_upstream and relay, on the Router's pool, settings, registry and metrics."""

    # set by service.Router
    settings: RouterSettings
    registry: BackendRegistry
    backends: list[Backend]
    metrics: RouterMetrics
    pool: H1Pool | None
    watch: StreamWatch | None
    _timeouts: Timeouts
    _stream_timeouts: Timeouts
    _heads: dict[tuple[str, str], tuple[dict, Target, bytes]]

    def _head(self, b: Backend, path: str) -> tuple[Target, bytes]:
        """Where `path` of a backend is and the head of a request to it (made once, not per
        request; made again when the backend's headers change)."""
        key = (b.url, path)
        hit = self._heads.get(key)
        if hit is None or hit[0] is not b.headers:
            if len(self._heads) >= _HEADS_KEPT:  # backends came and went: start over
                self._heads.clear()
            target = Target.of(b.url)
            lines = [f"POST {path} HTTP/1.1\r\n".encode(), target.host_line,
                     b"Accept-Encoding: identity\r\n"]  # fmt: skip
            # bodies are relayed as they come: no engine may compress them
            lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in b.headers.items()]
            hit = self._heads[key] = (b.headers, target, b"".join(lines))
        return hit[1], hit[2]

    def backend_failed(self, e: BackendFailed) -> None: ...  # service.Router's

    def _timed_out(self, b: Backend) -> APIError:
        return APIError(
            504,
            f"backend {b.name} did not answer within {self.settings.request_timeout:g} s",
            code="timeout",
        )

    def _idle_reason(self) -> str:
        return f"no data for {self.settings.idle_timeout:g} s (--idle-timeout)"

    async def open_upstream(
        self, call: ProxyCall, idx: int, body: bytes | None = None, watched: bool = False
    ) -> Upstream:
        """Send the call to backend `idx`; return once the first body bytes (streaming) or the
        whole body arrived. Raises BackendFailed if the backend failed before that (including
        when it left rotation meanwhile: nothing was sent to the client, so it may go elsewhere).
        A watched stream (self.watch) goes through _open_watched, which comes back here with
        `watched` set (the usual request takes no frame more than it needs)."""
        if not watched and call.stream and self.watch is not None:
            return await self._open_watched(self.watch, call, idx, body)
        b = self.backends[idx]
        self.registry.sending(idx)
        target, head = self._head(b, call.path)
        fwd = call.forward_headers  # printable ASCII only (validation.forward_headers)
        if len(fwd) == 1 and "x-request-id" in fwd:  # the usual case: the id alone
            head += b"x-request-id: %s\r\n" % fwd["x-request-id"].encode("utf-8", "surrogateescape")
        elif fwd:
            head += "".join([f"{k}: {v}\r\n" for k, v in fwd.items()]).encode(
                "utf-8", "surrogateescape"
            )
        assert self.pool is not None
        with self.runs.running(idx):
            try:
                resp = await self.pool.request(
                    target,
                    head,
                    call.raw if body is None else body,
                    self._stream_timeouts if call.stream else self._timeouts,
                )
                try:
                    if call.stream and resp.status == 200:
                        first = await resp.readany()
                        if not first:
                            raise BackendFailed(idx, "stream ended before its first byte")
                    else:
                        first = await resp.read()
                except BaseException:
                    resp.close()
                    raise
            except asyncio.CancelledError:
                why = self.runs.stopped()  # the backend left rotation: nothing sent, go elsewhere
                if why is None:
                    raise
                raise BackendFailed(idx, f"left rotation: {why}") from None
            except ConnectFailed as e:
                raise BackendFailed(idx, f"cannot connect: {e.strerror or e}", True) from None
            except ConnectTimeout as e:
                raise BackendFailed(idx, f"connect timed out: {e}") from None
            except IdleTimeout:  # idle past idle_timeout before a byte: go elsewhere
                raise BackendFailed(idx, self._idle_reason()) from None
            except TimeoutError:  # the request's own time limit
                raise self._timed_out(b) from None
            except OSError as e:
                raise BackendFailed(idx, f"{type(e).__name__}: {e}") from None
        self.registry.answered(idx, resp.status)
        return Upstream(resp, first, idx)

    async def _open_watched(
        self, w: StreamWatch, call: ProxyCall, idx: int, body: bytes | None
    ) -> Upstream:
        rid = call.info.id
        w.sent(idx, rid, call.info.prompt_tokens, time.monotonic())
        try:
            up = await self.open_upstream(call, idx, body, watched=True)
        except BaseException:
            w.done(idx, rid, time.monotonic())
            raise
        if up.resp.status == 200:
            w.chunk(idx, rid, time.monotonic(), up.first)
        return up

    async def relay(self, call: ProxyCall, up: Upstream) -> web.StreamResponse:
        """Answer the client with the upstream response; streams are relayed chunk by chunk."""
        resp = up.resp
        name = self.backends[up.idx].name
        call.backend = name
        m = self.metrics
        w = self.watch if call.stream else None
        if not (call.stream and resp.status == 200):
            if w is not None:
                w.done(up.idx, call.info.id, time.monotonic())
            ct = resp.content_type or "application/json"
            resp.release()
            m.count(name, resp.status)
            m.observe_e2e(name, time.monotonic() - call.t0)
            if resp.status == 200:
                call.tokens = usage_tokens(up.first)
                call.complete = True
            return WholeResponse(resp.status, ct, up.first, call.request_id)
        call.ttft = time.monotonic() - call.t0
        m.observe_ttft(name, call.ttft)
        request = call.request
        out: web.StreamResponse
        if request.__class__ is RawRequest:  # the raw server's: written onto its connection
            out = RawStream(
                request.conn,  # type: ignore[attr-defined]
                request.version[1],
                request.keep_alive,
                resp.content_type or "text/event-stream",
                call.request_id,
            )
        else:
            out = _EventStream(
                status=200,
                headers={
                    "Content-Type": resp.content_type or "text/event-stream",
                    "Cache-Control": "no-cache",
                    "x-request-id": call.request_id,
                },
            )
        request[STREAM_KEY] = out  # the drain ends a started stream with an error event
        clean = False
        try:
            await out.prepare(request)
            # the whole stream came with its first bytes (a fast engine, a short answer): it
            # goes out with its end in one write; otherwise the first bytes go out at once
            tail = up.first if resp.ended else b""
            if not tail:
                await out.write(up.first)
            broke: BaseException | None = None
            events = token_events(up.first)
            prev = last = up.first
            left: str | None = None
            with self.runs.running(up.idx):
                try:
                    while not tail:
                        try:
                            chunk = await resp.readany()
                        except (TimeoutError, OSError) as e:
                            broke = e
                            break
                        if not chunk:
                            break
                        events += token_events(chunk)
                        prev, last = last, chunk
                        if w is not None:
                            w.chunk(up.idx, call.info.id, time.monotonic(), chunk)
                        await out.write(chunk)
                except asyncio.CancelledError:
                    left = self.runs.stopped()
                    if left is None:
                        raise
            used = usage_tokens(last)
            if used is None:
                used = usage_tokens(prev)
            call.tokens = used if used is not None else events
            if left is not None:  # the backend left rotation mid-stream
                err = APIError(
                    502, f"backend {name} left rotation mid-stream: {left}", code="backend_failed"
                )
                await out.write(err.sse_event())
                m.count(name, err.status)
            elif broke is not None:
                if isinstance(broke, IdleTimeout):  # idle past --idle-timeout
                    self.backend_failed(BackendFailed(up.idx, self._idle_reason()))
                    err = APIError(
                        502,
                        f"backend {name} sent nothing for {self.settings.idle_timeout:g} s "
                        f"mid-stream (--idle-timeout)",
                        code="backend_failed",
                    )
                elif isinstance(broke, TimeoutError):  # the request's total time limit
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
                call.complete = True
                m.count(name, 200)
                m.observe_e2e(name, time.monotonic() - call.t0)
            await out.write_eof(tail)
        except ConnectionResetError:  # the client went away (when not seen as a cancellation)
            clean = False
            call.client_gone = True
            m.count(name, 499)
        finally:
            if w is not None:
                w.done(up.idx, call.info.id, time.monotonic())
            if clean:
                resp.release()
            else:
                resp.close()  # client gone or upstream broken: drop the connection (engine aborts)
        return out
