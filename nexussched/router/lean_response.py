"""A whole (non-streaming) relayed answer written as one prepared block: status line, headers and
body in one transport write, without aiohttp's per-answer header multidict, status and
content-length setters, header serialisation and payload writer (web.Response's prepare path).

aiohttp serves it like any StreamResponse (the server calls prepare() then write_eof() and reads
keep_alive); what a Response would do is kept: the request's HTTP version, `Date`,
`Content-Length`, `Connection: close` when the client asked to close (and `keep-alive` to an
HTTP/1.0 client that asked to keep it), any header set before prepare() (the request id)."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


class WholeResponse(web.StreamResponse):
    """A complete answer (status, content type, body) sent as one block."""

    def __init__(
        self, status: int, content_type: str, body: bytes, request_id: str | None = None
    ) -> None:
        # no StreamResponse.__init__: everything it sets up is what this class leaves out; the
        # properties aiohttp's server and the router read are defined here
        self._w_status = status
        self._w_body = body
        self._w_headers: dict[str, str] = {"Content-Type": content_type}
        if request_id:
            self._w_headers["x-request-id"] = request_id
        self._w_sent = False
        self._w_keep_alive: bool | None = None
        self._state: dict = {}  # StreamResponse's mapping (unused here)

    @property
    def status(self) -> int:
        return self._w_status

    @property
    def reason(self) -> str:
        return _REASONS.get(self._w_status, b"").decode()

    @property
    def headers(self) -> dict[str, str]:  # type: ignore[override]
        return self._w_headers

    @property
    def body(self) -> bytes:
        return self._w_body

    @property
    def body_length(self) -> int:
        return len(self._w_body) if self._w_sent else 0

    @property
    def content_length(self) -> int:
        return len(self._w_body)

    @property
    def prepared(self) -> bool:
        return self._w_sent

    @property
    def keep_alive(self) -> bool | None:
        return self._w_keep_alive

    def force_close(self) -> None:
        self._w_keep_alive = False

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        if self._w_sent:
            return None
        self._w_sent = True
        body = self._w_body
        extra = f"Content-Length: {len(body)}\r\n".encode()
        ka = self._w_keep_alive
        if ka is None:
            ka = self._w_keep_alive = request.keep_alive
        head = _head(request, self._w_status, self._w_headers, extra, ka)
        if request.method != "HEAD":
            head += body
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(head)
        await request.writer.drain()  # a slow reader: wait as aiohttp's own writer would
        return None

    async def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        raise RuntimeError("a WholeResponse is sent whole: pass the body at construction")

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise RuntimeError("a WholeResponse is sent whole: pass the body at construction")


def _head(
    request: web.BaseRequest, status: int, headers: dict[str, str], extra: bytes, ka: bool
) -> bytes:
    """The response head for `request`; `ka`: whether the connection is kept after it."""
    major, minor = request.version
    lines = [
        b"HTTP/%d.%d %d %s\r\n" % (major, minor, status, _REASONS.get(status, b"")),
        f"Date: {rfc822_formatted_time()}\r\n".encode(),
        extra,
    ]
    for k, v in headers.items():
        lines.append(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))  # as aiohttp
    if not ka:
        lines.append(b"Connection: close\r\n")
    elif (major, minor) < (1, 1):
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
