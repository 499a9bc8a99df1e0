"""One connection of the router's data-plane client (h1client.py) and the response read on it: a
small HTTP/1.1 response parser (status line, the few headers the router reads, Content-Length or
chunked bodies, or a body until close) that hands out the body as received bytes, with
back-pressure (the socket stops being read past HIGH_WATER buffered bytes) and the time limits the
pool's sweep checks."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from .h1types import IdleTimeout, Target, Timeouts, TotalTimeout, UpstreamBroken

MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers
HIGH_WATER = 1 << 20  # buffered bytes of a stream above which the socket stops being read


# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class _Pool(Protocol):
    """What a connection and its response use of their pool (h1client.H1Pool)."""

    _live: set

    def _forget(self, conn: _Conn) -> None: ...

    def _done(self, conn: _Conn, reuse: bool) -> None: ...


class _Conn(asyncio.Protocol):
    """One keep-alive connection; hands what arrives to the response being read on it."""

    __slots__ = ("pool", "key", "transport", "lost", "reused", "idle_since", "resp")

    def __init__(self, pool: _Pool, key: Target) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reused = 0  # requests served before the current one
        self.idle_since = 0.0
        self.resp: H1Response | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        r = self.resp
        if r is None:  # bytes on an idle connection: it cannot be trusted again
            self.close()
            return
        r._data(data)

    def eof_received(self) -> bool:
        r = self.resp
        if r is not None:
            r._eof(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self.pool._forget(self)
        r = self.resp
        if r is not None:
            r._eof(exc)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.pool._forget(self)


class H1Response:
    """One response: its status line, the headers the router reads, and its body as it comes.
    Owns its connection until the body ended (then the connection goes back to the pool)."""

    __slots__ = (
        "status", "content_type", "keep_alive", "_conn", "_state", "_buf", "_parts", "_buffered",
        "_left", "_got", "_exc", "_waiter", "_want_all", "_paused", "_deadline", "_idle", "_last",
        "_loop",
    )  # fmt: skip

    def __init__(
        self, conn: _Conn, timeouts: Timeouts, now: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop  # (asyncio.get_running_loop() costs a getpid() system call)
        self.status = 0
        self.content_type = ""
        self.keep_alive = True
        self._conn: _Conn | None = conn
        self._state = _HEAD
        self._buf = b""  # unparsed bytes (head, chunk framing)
        self._parts: list[bytes] = []  # body bytes not yet taken by the reader
        self._buffered = 0
        self._left = 0  # of the Content-Length, or of the current chunk
        self._got = 0  # bytes received
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._want_all = False
        self._paused = False
        # checked by the pool's sweep (no timer per request): time.monotonic() values
        self._deadline = now + timeouts.total
        self._idle = timeouts.idle
        self._last = now  # the last byte received (or the request sent)

    # ---- from the connection -----------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        self._got += len(data)
        if self._idle is not None:
            self._last = time.monotonic()
        try:
            self._feed(data)
        except UpstreamBroken as e:
            self._fail(e)
            return
        if self._state == _DONE:
            self._finished()
        elif self._buffered > HIGH_WATER and not self._paused and not self._want_all:
            c = self._conn
            if c is not None and c.transport is not None:
                self._paused = True
                c.transport.pause_reading()
        self._wake()

    def _eof(self, exc: Exception | None) -> None:
        if self._state == _DONE:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            self._state = _DONE
            self.keep_alive = False
            self._finished()
            self._wake()
            return
        if exc is not None:
            why = f"{type(exc).__name__}: {exc}"
        elif self._state == _HEAD:
            why = "connection closed before a response" if not self._got else "truncated head"
        else:
            why = "connection closed mid-body"
        self._fail(UpstreamBroken(why))

    # ---- parsing -----------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        while data:
            st = self._state
            if st == _LENGTH or st == _CHUNK_DATA:
                n = len(data)
                left = self._left
                if n <= left:
                    self._parts.append(data)
                    self._buffered += n
                    self._left = left = left - n
                    data = b""
                else:
                    self._parts.append(data[:left])
                    self._buffered += left
                    data = data[left:]
                    self._left = left = 0
                if left == 0:
                    self._state = _DONE if st == _LENGTH else _CHUNK_CRLF
            elif st == _HEAD:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise UpstreamBroken("response head too large")
                    self._buf = data
                    return
                self._head(data[:end])
                data = data[end + 4 :]
            elif st == _CHUNK_SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > 1024:
                        raise UpstreamBroken("bad chunk size line")
                    self._buf = data
                    return
                try:
                    size = int(data[:end].split(b";", 1)[0], 16)
                except ValueError:
                    raise UpstreamBroken("bad chunk size line") from None
                data = data[end + 2 :]
                if size:
                    self._left = size
                    self._state = _CHUNK_DATA
                else:
                    self._state = _TRAILER
            elif st == _CHUNK_CRLF:
                if len(data) < 2:
                    self._buf = data
                    return
                if data[:2] != b"\r\n":
                    raise UpstreamBroken("bad chunk end")
                data = data[2:]
                self._state = _CHUNK_SIZE
            elif st == _TRAILER:
                end = data.find(b"\r\n")
                if end < 0:
                    self._buf = data
                    return
                data = data[end + 2 :]
                if end == 0:  # the blank line after the (usually empty) trailer
                    self._state = _DONE
            elif st == _UNTIL_CLOSE:
                self._parts.append(data)
                self._buffered += len(data)
                data = b""
            else:  # _DONE with bytes left over (a broken engine): never reuse this connection
                self.keep_alive = False
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        first = lines[0]
        if not first.startswith(b"HTTP/1.") or len(first) < 12:
            raise UpstreamBroken(f"not an HTTP/1.x response: {first[:40]!r}")
        try:
            status = int(first[9:12])
        except ValueError:
            raise UpstreamBroken(f"bad status line {first[:40]!r}") from None
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return
        self.status = status
        self.keep_alive = first[7:8] == b"1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            n = name.strip().lower()
            if n == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise UpstreamBroken("bad Content-Length") from None
            elif n == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif n == b"content-type":
                self.content_type = value.strip().decode("latin-1")
            elif n == b"connection":
                v = value.strip().lower()
                if v == b"close":
                    self.keep_alive = False
                elif v == b"keep-alive":
                    self.keep_alive = True
        if status == 204 or status == 304:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._left = length
            self._state = _LENGTH if length else _DONE
        else:  # the body runs until the engine closes the connection
            self._state = _UNTIL_CLOSE
            self.keep_alive = False

    # ---- waiting -----------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is None or w.done() or self._state == _HEAD:
            return
        if self._want_all and self._state != _DONE:
            return
        w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(self._exc)
        self._drop()

    def _check(self, now: float) -> None:
        """The pool's sweep: fail a response past its time limit, or one whose reader waits
        and that received nothing for `idle` seconds."""
        if now >= self._deadline:
            self._fail(TotalTimeout("the request's time limit passed"))
        elif self._idle is not None and self._waiter is not None and now - self._last >= self._idle:
            self._fail(IdleTimeout(f"no data for {self._idle:g} s"))

    # ---- the reader's side -------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """The whole body arrived and was read: readany() would give b"" at once."""
        return self._state == _DONE and not self._parts

    async def read(self) -> bytes:
        """The whole body."""
        self._want_all = True
        while self._state != _DONE:
            if self._exc is not None:
                raise self._exc
            w = self._waiter = self._loop.create_future()  # (inline: no frame per wake)
            try:
                await w
            finally:
                self._waiter = None
        parts = self._parts  # (the whole body arrived: the socket is read again, if paused)
        if len(parts) == 1 and not self._paused:  # the usual case, without _pop()
            self._buffered = 0
            return parts.pop()
        return self._pop()

    async def readany(self) -> bytes:
        """The body bytes received so far, waiting for some; b"" at its end."""
        while not self._parts:
            if self._state == _DONE:
                return b""
            if self._exc is not None:
                raise self._exc
            w = self._waiter = self._loop.create_future()  # (inline: no frame per wake)
            try:
                await w
            finally:
                self._waiter = None
        return self._pop()

    def _pop(self) -> bytes:
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            c = self._conn
            if c is not None and c.transport is not None:
                c.transport.resume_reading()
        return data

    def release(self) -> None:
        """Done with the response. Its connection went back to the pool when the body ended;
        one still being read is closed."""
        if self._conn is not None:
            self._drop()

    close = release  # a response read to its end keeps its (pooled) connection either way

    # ---- the connection ----------------------------------------------------------------------
    def _detach(self) -> _Conn | None:
        """Unhook this response from its connection (None if it was already)."""
        c = self._conn
        if c is not None:
            self._conn = None
            c.resp = None
            c.pool._live.discard(self)
        return c

    def _finished(self) -> None:
        """The body ended: the connection is free again (pooled, or closed)."""
        c = self._detach()
        if c is None:
            return
        if self._paused and c.transport is not None:
            c.transport.resume_reading()
        c.pool._done(c, self.keep_alive and not c.lost)

    def _drop(self) -> None:
        c = self._detach()
        if c is not None:
            c.close()
            c.pool._done(c, False)
