"""A streamed answer on the raw server's connection (raw_server.py): the status line and headers
go out with the first chunk, in one write, and every chunk the relay hands over (upstream.py) is
written straight onto the transport as an HTTP/1.1 chunk, at once (the first one included: no
buffering between the engine's first token and the client).

It stands where aiohttp's StreamResponse would (relay() writes to either; the guard's drain ends
a started one with an SSE error event through the same write / write_eof), without aiohttp's
request object, header multidict, response-prepare signal and payload writer.

Back-pressure: a write returns at once unless the client's socket buffer is over the transport's
high-water mark (pause_writing); then it waits for resume_writing, so a client that reads slowly
slows the relay of its stream, and the engine's answer waits in the upstream buffer (which stops
reading its socket in turn). HTTP/1.0 (no chunked encoding there): the body runs until the
connection closes, as aiohttp answers it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time


class StreamConn(Protocol):
    """What a RawStream uses of its connection (raw_server.RawConnection)."""

    transport: asyncio.Transport | None
    write_paused: bool

    async def drained(self) -> None: ...


class RawStream(web.StreamResponse):
    """A 200 event stream written onto a raw connection (chunked on HTTP/1.1)."""

    # no StreamResponse.__init__ (as lean_response.WholeResponse): what the router, the guard
    # and the raw server read of a response is defined here
    def __init__(
        self, conn: StreamConn, minor: int, keep_alive: bool, content_type: str, request_id: str
    ) -> None:
        self._conn = conn
        self._chunked = minor == 1
        self._ka = keep_alive and self._chunked  # HTTP/1.0: the close ends the body
        self._head: bytes | None = self._make_head(minor, content_type, request_id)
        self._started = False  # prepare() was called: the guard ends it with an error event
        self.ended = False  # the last chunk went out: the connection may serve another request
        self._state: dict = {}  # StreamResponse's mapping (unused here)

    def _make_head(self, minor: int, content_type: str, request_id: str) -> bytes:
        conn = b""
        if not self._ka:
            conn = b"Connection: close\r\n"
        rid = request_id.encode("utf-8", "surrogateescape")
        return (
            b"HTTP/1.%d 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n"
            b"x-request-id: %s\r\nDate: %s\r\n%s%s\r\n"
            % (
                minor,
                content_type.encode("latin-1", "replace"),
                rid,
                rfc822_formatted_time().encode(),
                b"Transfer-Encoding: chunked\r\n" if self._chunked else b"",
                conn,
            )
        )

    @property
    def status(self) -> int:
        return 200

    @property
    def prepared(self) -> bool:
        return self._started

    @property
    def keep_alive(self) -> bool:
        return self._ka

    async def prepare(self, request: object) -> None:  # type: ignore[override]
        self._started = True  # (the head leaves with the first chunk)

    async def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self.ended:
            raise RuntimeError("the stream has ended")
        conn = self._conn
        t = conn.transport
        if t is None or t.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            if not data:
                return  # an empty chunk would end the body
            data = b"%x\r\n%b\r\n" % (len(data), data)
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        t.write(data)
        if conn.write_paused:  # the client does not keep up: wait until it read some
            await conn.drained()

    async def write_eof(self, data: bytes = b"") -> None:  # type: ignore[override]
        """The last chunk (with `data`, and the head if not yet sent: one write)."""
        if self.ended:
            return
        t = self._conn.transport
        if t is None or t.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            last = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        else:
            last = bytes(data)
        if self._head is not None:
            last, self._head = self._head + last, None
        if last:
            t.write(last)
        self.ended = True
