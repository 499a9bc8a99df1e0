"""The router's server for the two API routes, on a raw asyncio Protocol (the request head and
answer block as raw_http.py makes them). One request per connection at a time, answered in order
(pipelined requests wait in the buffer); keep-alive, `Connection: close`, HTTP/1.0.

A streamed answer is written onto the connection too, chunk by chunk as the relay gets them
(raw_stream.RawStream); the connection then serves its next request. A connection whose next
request this server does not serve (raw_http.parse_head says which) is handed to aiohttp for the
rest of its life: aiohttp's RequestHandler takes the transport (`set_protocol`) and is fed the bytes
not yet answered, as if they had just arrived.

Time limits: one sweep a second over the connections (no timer per request) closes a connection
that sat idle, or part-way through a head, for `header_timeout` s, and answers 408 to a body not
complete within `body_timeout` s (each within a sweep's second of its limit). Back-pressure: a
client that does not read its answers stops being read (pause_writing; a stream's writes wait
for it), and the socket stops being read while PAUSE_AT bytes of pipelined requests wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from .errors import APIError
from .hygiene import STREAM_KEY
from .raw_http import MAX_HEAD, Handler, RawRequest, answer_bytes, parse_head

log = logging.getLogger("nexussched.router")
SWEEP_EVERY = 1.0  # seconds between time-limit checks
PAUSE_AT = 1 << 20  # bytes of pipelined requests buffered while one is answered


class RawServer:
    """The protocol factory of a listening socket (RawConnection per connection), the time-limit
    sweep over its connections, and the aiohttp server they hand over to."""

    def __init__(
        self,
        handler: Handler,
        fallback: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
        max_body: int,
        header_timeout: float,
        body_timeout: float,
    ) -> None:
        self.handler = handler
        self.fallback = fallback  # aiohttp's web.Server: makes a RequestHandler
        self.loop = loop
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.conns: set[RawConnection] = set()
        self.closing = False  # shutting down: each connection closes after its current answer
        self.handed = 0  # connections handed to aiohttp (for tests and curiosity)
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> RawConnection:
        return RawConnection(self)

    def arm(self) -> None:
        if self._timer is None and self.conns:
            self._timer = self.loop.call_later(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for c in list(self.conns):
            c.check(now)
        self.arm()

    def close_idle(self) -> None:
        """Shutting down (after the listening socket closed): connections without a request in
        progress close now, the others after their answer (aiohttp's pre_shutdown does so)."""
        self.closing = True
        for c in list(self.conns):
            if not c.busy:
                c.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class RawConnection(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request taken and not yet answered (or handed over)
        self._chunks: list[bytes] = []  # bytes not yet answered; [0] starts the next request
        self._size = 0
        self._need = 1  # buffered bytes wanted before parsing again
        self._waiting: RawRequest | None = None  # a request whose body is not all here
        self._body_at = 0  # where its body starts in the buffer
        self._task: asyncio.Task | None = None
        self._served = 0  # requests answered (the sweep tells idle from active by it)
        self._mark = -1  # _served (or -2 - bytes buffered) when the sweep last looked
        self._since = 0.0  # when the sweep first saw it in its present wait
        self._read_paused = False
        self.write_paused = False  # the transport's buffer is over its high-water mark
        self._drained: asyncio.Future | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(self)
        self.server.arm()

    def data_received(self, data: bytes) -> None:
        if self._chunks:
            self._chunks.append(data)
            self._size += len(data)
        else:
            self._chunks = [data]
            self._size = len(data)
        if self.busy:
            if self._size > PAUSE_AT and not self._read_paused and self.transport is not None:
                self._read_paused = True
                self.transport.pause_reading()
            return
        if self._size >= self._need:
            self._next()

    def eof_received(self) -> None:
        return None  # the client is done sending: close (as aiohttp does)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: the handler's cancellation aborts upstream
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drained(self) -> None:
        """Until the client read enough of what was written (resume_writing); CancelledError
        when the connection is lost meanwhile."""
        if not self.write_paused:
            return
        self._drained = self.server.loop.create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    # ---- requests ----------------------------------------------------------------------------
    def _next(self) -> None:
        """Take the next buffered request, if it is all here."""
        chunks = self._chunks
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = [buf]
        req = self._waiting
        if req is None:
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    return self._hand_off()  # a long head: aiohttp's limits answer it
                self._need = len(buf) + 1
                return
            parsed = parse_head(buf[: end + 2])
            if parsed is None:
                return self._hand_off()
            req, length = parsed
            start = end + 4
            if length > self.server.max_body:
                req.refusal = APIError(
                    413,
                    f"request body of {length} bytes exceeds the limit of "
                    f"{self.server.max_body} bytes",
                    code="request_too_large",
                )
                req.keep_alive = False  # its body is not read: the connection cannot go on
                return self._start(req, start)
            if len(buf) < start + length:
                self._waiting = req
                self._body_at = start
                self._need = start + length
                return
            req.body = buf[start : start + length]
        else:
            start = self._body_at
            self._waiting = None
            req.body = buf[start : self._need]
        self._start(req, start + len(req.body))

    def _start(self, req: RawRequest, used: int) -> None:
        self.busy = True
        req.conn = self  # a streamed answer is written onto it (raw_stream.py)
        self._need = used  # bytes of this request, dropped once it is answered
        self._task = self.server.loop.create_task(self._serve(req))

    async def _serve(self, req: RawRequest) -> None:
        try:
            out = await self.server.handler(req)
        except asyncio.CancelledError:
            return  # the client left
        except Exception:  # (the guard answers everything; a bug must not hang the connection)
            log.exception("unexpected error answering %s on the raw server", req.path)
            req.keep_alive = False
            out = APIError(500, "internal error in the router (logged)", code="internal_error")
            out = out.response()
        t = self.transport
        if t is None or t.is_closing():
            return
        keep = req.keep_alive and not self.server.closing
        started = req.get(STREAM_KEY)
        if started is not None:  # a stream was answered (its chunks are out)
            if out is not started or not started.ended:
                # an error after its head went out (a bug: the relay ends its streams), or a
                # stream cut short: the client cannot tell where the next answer starts
                t.close()
                return
            keep = keep and started.keep_alive
        else:
            try:
                data = answer_bytes(req, out, keep)
            except TypeError:  # a dispatcher answered with a stream: not for this server
                log.exception("cannot answer %s on the raw server", req.path)
                t.close()
                return
            t.write(data)
        self._served += 1
        if not keep:
            t.close()  # (after what is buffered went out)
            return
        if self.write_paused:  # a client that does not read: wait before the next request
            try:
                await self.drained()
            except asyncio.CancelledError:
                return
        self._task = None
        self.busy = False
        used = self._need
        chunks = self._chunks
        rest = chunks[0][used:]
        self._chunks = [rest, *chunks[1:]] if rest else chunks[1:]
        self._size -= used
        self._need = 1
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        if self._size:
            self._next()

    def _hand_off(self) -> None:
        """aiohttp serves the rest of this connection, from the first byte not yet answered."""
        self.busy = True
        self.server.conns.discard(self)
        t = self.transport
        self.transport = None
        data = b"".join(self._chunks)
        self._chunks = []
        if t is None or t.is_closing():
            return
        self.server.handed += 1
        handler = self.server.fallback()
        t.set_protocol(handler)
        handler.connection_made(t)
        if self._read_paused:
            t.resume_reading()
        if data:
            handler.data_received(data)

    # ---- limits ------------------------------------------------------------------------------
    def check(self, now: float) -> None:
        """The sweep: close a connection idle or in a head past header_timeout; answer 408 to a
        body not here within body_timeout."""
        if self.busy:
            return
        # a new wait (for a head after an answer, or for a body) starts when first seen here;
        # bytes trickling in do not restart it (the limits are totals, as aiohttp's)
        mark = self._served if self._waiting is None else -2 - self._served
        if mark != self._mark:
            self._mark = mark
            self._since = now
            return
        s = self.server
        req = self._waiting
        if req is None:
            if now - self._since >= s.header_timeout:
                self.close()
        elif now - self._since >= s.body_timeout:
            self._waiting = None
            req.refusal = APIError(
                408,
                f"request body not received within {s.body_timeout:g} s (--body-timeout)",
                code="request_timeout",
            )
            req.keep_alive = False
            req.body = b""
            self._start(req, 0)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawSite(web.TCPSite):
    """A TCPSite whose connections start on the raw server (aiohttp's server takes those handed
    over; aiohttp's runner stops it and drains as any site)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        handler: Handler,
        host: str | None,
        port: int,
        *,
        max_body: int,
        header_timeout: float,
        body_timeout: float,
        backlog: int = 4096,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        self._limits = (max_body, header_timeout, body_timeout)
        self._handler = handler
        self.raw: RawServer | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        fallback = self._runner.server
        assert fallback is not None
        self.raw = RawServer(self._handler, fallback, loop, *self._limits)
        self._server = await loop.create_server(
            self.raw,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()  # the listening socket first
        if self.raw is not None:
            self.raw.close_idle()
