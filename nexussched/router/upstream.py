"""The router's upstream side (a mixin of service.Router): sending a call to a backend until its
first bytes arrive (`open_upstream`, raising BackendFailed when the request may go elsewhere)
and relaying the answer to the client (`relay`; streams chunk by chunk, a break mid-stream ends
with an SSE error event)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from yarl import URL

from .access_log import token_events, usage_tokens
from .backends import Backend, BackendRegistry
from .config import RouterSettings
from .dispatch import BackendFailed, ProxyCall, StreamWatch, Upstream
from .errors import APIError
from .prom import RouterMetrics


class _EventStream(web.StreamResponse):
    """A relayed stream: its headers go out with the first chunk, in one write (aiohttp's
    StreamResponse otherwise sends them alone at prepare())."""

    _send_headers_immediately = False


_URLS_KEPT = 256  # parsed upstream URLs kept (two paths per backend; cleared past this)


class UpstreamIO:
    """open_upstream and relay, on the Router's session, settings, registry and metrics."""

    # set by service.Router
    settings: RouterSettings
    registry: BackendRegistry
    backends: list[Backend]
    metrics: RouterMetrics
    session: aiohttp.ClientSession | None
    watch: StreamWatch | None
    _timeout: aiohttp.ClientTimeout
    _stream_timeout: aiohttp.ClientTimeout
    _urls: dict[tuple[str, str], URL]

    def _url(self, base: str, path: str) -> URL:
        """The parsed URL of `path` on a backend (parsed once, not per request)."""
        key = (base, path)
        u = self._urls.get(key)
        if u is None:
            if len(self._urls) >= _URLS_KEPT:  # backends came and went: start over
                self._urls.clear()
            u = self._urls[key] = URL(base + path)
        return u

    def backend_failed(self, e: BackendFailed) -> None: ...  # service.Router's

    def _timed_out(self, b: Backend) -> APIError:
        return APIError(
            504,
            f"backend {b.name} did not answer within {self.settings.request_timeout:g} s",
            code="timeout",
        )

    def _idle_reason(self) -> str:
        return f"no data for {self.settings.idle_timeout:g} s (--idle-timeout)"

    async def open_upstream(self, call: ProxyCall, idx: int, body: bytes | None = None) -> Upstream:
        """Send the call to backend `idx`; return once the first body bytes (streaming) or the
        whole body arrived. Raises BackendFailed if the backend failed before that (including
        when it left rotation meanwhile: nothing was sent to the client, so it may go elsewhere)."""
        w = self.watch if call.stream else None
        if w is None:
            return await self._open_in_rotation(call, idx, body)
        rid = call.info.id
        w.sent(idx, rid, call.info.prompt_tokens, time.monotonic())
        try:
            up = await self._open_in_rotation(call, idx, body)
        except BaseException:
            w.done(idx, rid, time.monotonic())
            raise
        if up.resp.status == 200:
            w.chunk(idx, rid, time.monotonic(), up.first)
        return up

    async def _open_in_rotation(self, call: ProxyCall, idx: int, body: bytes | None) -> Upstream:
        with self.runs.running(idx):
            try:
                return await self._open_upstream(call, idx, body)
            except asyncio.CancelledError:
                why = self.runs.stopped()
                if why is None:
                    raise
                raise BackendFailed(idx, f"left rotation: {why}") from None

    async def _open_upstream(self, call: ProxyCall, idx: int, body: bytes | None) -> Upstream:
        b = self.backends[idx]
        self.registry.sending(idx)
        headers = b.headers if not call.forward_headers else {**b.headers, **call.forward_headers}
        assert self.session is not None
        try:
            resp = await self.session.post(
                self._url(b.url, call.path),
                data=call.raw if body is None else body,
                headers=headers,
                timeout=self._stream_timeout if call.stream else self._timeout,
            )
        except aiohttp.ClientConnectorError as e:
            raise BackendFailed(idx, f"cannot connect: {e.os_error.strerror or e}", True) from None
        except aiohttp.ConnectionTimeoutError as e:
            raise BackendFailed(idx, f"connect timed out: {e}") from None
        except aiohttp.ServerTimeoutError:  # idle past idle_timeout before a byte: go elsewhere
            raise BackendFailed(idx, self._idle_reason()) from None
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
        except aiohttp.ServerTimeoutError:
            resp.close()
            raise BackendFailed(idx, self._idle_reason()) from None
        except TimeoutError:
            resp.close()
            raise self._timed_out(b) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            resp.close()
            raise BackendFailed(idx, f"{type(e).__name__}: {e}") from None
        except BaseException:
            resp.close()
            raise
        self.registry.answered(idx, resp.status)
        return Upstream(resp, first, idx)

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
            ct = resp.headers.get("Content-Type", "application/json")
            resp.release()
            m.count(name, resp.status)
            m.observe_e2e(name, time.monotonic() - call.t0)
            if resp.status == 200:
                call.tokens = usage_tokens(up.first)
                call.complete = True
            return web.Response(status=resp.status, body=up.first, headers={"Content-Type": ct})
        call.ttft = time.monotonic() - call.t0
        m.observe_ttft(name, call.ttft)
        out = _EventStream(
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
            events = token_events(up.first)
            prev = last = up.first
            left: str | None = None
            with self.runs.running(up.idx):
                try:
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
                if isinstance(broke, aiohttp.ServerTimeoutError):  # idle past --idle-timeout
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
            await out.write_eof()
        except ConnectionResetError:  # the client went away (when not seen as a cancellation)
            clean = False
            m.count(name, 499)
        finally:
            if w is not None:
                w.done(up.idx, call.info.id, time.monotonic())
            if clean:
                resp.release()
            else:
                resp.close()  # client gone or upstream broken: drop the connection (engine aborts)
        return out
