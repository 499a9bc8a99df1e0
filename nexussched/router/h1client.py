"""The router's data-plane client: pooled keep-alive HTTP/1.1 connections to the engines, on an
asyncio Protocol, with a small response parser (status line, the few headers it needs,
Content-Length or chunked bodies). Bodies and SSE chunks come out as received bytes: nothing is
decoded, re-encoded or copied into per-request objects beyond the byte strings themselves.

It replaces aiohttp's ClientSession on the request path, where it cost most of the router's CPU
(a ClientRequest, a ClientResponse, header multidicts, tracing hooks and timers per request).
Health probes, scrapes and feeds keep the aiohttp session: they are not per request.

    pool = H1Pool(limit=0)
    target = Target.of("http://127.0.0.1:8001")
    resp = await pool.request(target, head, body, timeouts)   # head: the request's header lines
    resp.status, resp.content_type
    data = await resp.read()          # whole body        | chunk = await resp.readany()  (b"": end)
    resp.release() / resp.close()     # back to the pool  | drop the connection (the engine aborts)

Errors are OSError / TimeoutError subclasses: ConnectFailed (refused, unreachable), ConnectTimeout,
IdleTimeout (no byte for `idle` s), TotalTimeout (the request's time limit), UpstreamBroken (the
connection ended or sent something that is not HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import ssl
import time

from .h1response import _HEAD, H1Response, _Conn
from .h1types import (
    ConnectFailed,
    ConnectTimeout,
    Target,
    Timeouts,
    UpstreamBroken,
)

__all__ = ["H1Pool", "H1Response"]

KEEPALIVE = (
    4.0  # seconds an idle connection is kept (below uvicorn's 5 s: never reused as it closes)
)


class H1Pool:
    """Idle keep-alive connections per backend (the most recently used is taken first), with an
    optional limit on connections in use (0: none)."""

    def __init__(self, limit: int = 0, keepalive: float = KEEPALIVE) -> None:
        self._idle: dict[Target, list[_Conn]] = {}
        self._sem = asyncio.Semaphore(limit) if limit > 0 else None
        self.keepalive = keepalive
        self._ssl: ssl.SSLContext | None = None
        self.opened = 0  # connections made (for tests and benchmarks)
        self._closed = False
        # responses being read, swept every _tick s for time limits (one timer for all, not one
        # per request: a uvloop timer per request cost 4% of the router's CPU)
        self._live: set[H1Response] = set()
        self._tick = 1.0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first request

    def _arm(self, tick: float) -> None:
        self._tick = min(self._tick, tick)
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        assert self._loop is not None
        self._sweep_handle = self._loop.call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        if not self._live:
            return  # armed again by the next request
        now = time.monotonic()
        for r in list(self._live):
            r._check(now)
        assert self._loop is not None
        self._sweep_handle = self._loop.call_later(self._tick, self._sweep)

    async def request(
        self, target: Target, head: bytes, body: bytes, timeouts: Timeouts
    ) -> H1Response:
        """Send one request (`head`: the request line and headers up to, not including, the
        blank line; Content-Length is added) and return once the response's head arrived."""
        now = time.monotonic()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        msg = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        sem = self._sem
        retried = False
        while True:
            if sem is not None:
                await sem.acquire()  # released by _done when the response lets go
            try:
                conn = self._take(target)
                if conn is None:
                    conn = await self._connect(target, timeouts.connect)
            except BaseException:
                if sem is not None:
                    sem.release()
                raise
            resp = conn.resp = H1Response(conn, timeouts, now, loop)
            self._live.add(resp)
            if self._sweep_handle is None or timeouts.tick < self._tick:
                self._arm(timeouts.tick)
            try:
                conn.transport.write(msg)  # type: ignore[union-attr]
                while resp._state == _HEAD:  # (resp._until_head(), inline: a frame fewer)
                    if resp._exc is not None:
                        raise resp._exc
                    w = resp._waiter = loop.create_future()
                    try:
                        await w
                    finally:
                        resp._waiter = None
            except UpstreamBroken:
                if conn.reused and not resp._got and not retried:
                    # a kept-alive connection the engine closed as we sent: try a fresh one
                    retried = True
                    continue
                raise
            except BaseException:
                resp._drop()
                raise
            return resp

    async def _connect(self, target: Target, timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = _Conn(self, target)
        tls = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, target.host, target.port, ssl=tls,
                    server_hostname=target.host if tls else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        except OSError as e:
            raise ConnectFailed(e.errno, e.strerror or str(e)) from None
        self.opened += 1
        return conn

    def _take(self, target: Target) -> _Conn | None:
        idle = self._idle.get(target)
        if not idle:
            return None
        now = time.monotonic()
        while idle and (idle[0].lost or now - idle[0].idle_since > self.keepalive):
            idle.pop(0).close()  # the oldest first: expired ones leave from the bottom
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since <= self.keepalive:
                conn.reused += 1
                return conn
            conn.close()
        return None

    def _done(self, conn: _Conn, reuse: bool) -> None:
        if self._sem is not None:
            self._sem.release()
        if reuse and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, []).append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def _forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection (those in use close as their responses end)."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
