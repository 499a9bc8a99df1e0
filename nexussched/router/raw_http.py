"""HTTP/1.1 as the router's raw server (raw_server.py) speaks it: a request head parsed with a few
bytes operations into a RawRequest, and a whole answer made into one block.

It serves only what it positively understands: `POST /v1/completions` or `/v1/chat/completions`,
HTTP/1.0 or 1.1, a Content-Length body, a head of plain printable lines. Anything else (other
routes and methods, a query string, chunked bodies, `Expect`, upgrades, a malformed or oversized
head) is handed to aiohttp for the rest of the connection, with the bytes not
yet answered: aiohttp's RequestHandler takes the transport over (`set_protocol`) and parses from
there, so its answers (400 for a bad head included) stay the authority on everything unusual.

Why: aiohttp's server side (its Request object, payload stream, handler task and response
machinery) was the largest part of the router's CPU per request after the lean client (README,
"router cost").
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time

from .errors import APIError
from .lean_response import WholeResponse
from .raw_stream import StreamConn
from .request_ids import REQUEST_ID
from .requests import CHAT, COMPLETIONS

API_PATHS = {COMPLETIONS.encode(): COMPLETIONS, CHAT.encode(): CHAT}
MAX_HEAD = 8190  # bytes of a head this server parses (aiohttp's line limit); more: aiohttp's
# header lines: a token, a colon, a value without control bytes (TAB allowed), CRLF
_FIELDS = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_HANDED = frozenset({"transfer-encoding", "expect", "upgrade"})  # headers aiohttp must see
_SKIP = frozenset({"content-length", "connection", "date", "transfer-encoding", "server"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class RawHeaders(dict):
    """A request's headers by lower-case name (the first of repeated ones). The router looks
    them up by lower-case name (aiohttp's headers take any case): a plain dict lookup each."""


class RawRequest(dict):
    """One parsed request, with what the router's handlers read of an aiohttp Request (method,
    path, headers, body, keep_alive, and item access for per-request state)."""

    __slots__ = ("method", "path", "version", "headers", "body", "keep_alive", "refusal", "conn")

    def __init__(self, path: str, minor: int, headers: RawHeaders, keep_alive: bool) -> None:
        self.method = "POST"
        self.path = path
        self.version = (1, minor)
        self.headers = headers
        self.body: bytes = b""
        self.keep_alive = keep_alive
        self.refusal: APIError | None = None  # answer this instead (413, 408): body not read
        self.conn: StreamConn | None = None  # its connection, where a streamed answer is written


Handler = Callable[[RawRequest], Awaitable[web.StreamResponse]]


def parse_head(head: bytes) -> tuple[RawRequest, int] | None:
    """(the request, its Content-Length) of a head (its lines, each with its CRLF, without the
    blank line), or None when this server does not serve it (aiohttp will, or will refuse it)."""
    i = head.find(b"\r\n")
    parts = head[:i].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST":
        return None
    path = API_PATHS.get(parts[1])
    if path is None or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    fields = head[i + 2 :]
    if _FIELDS.fullmatch(fields) is None:
        return None  # a name that is not a token, a control byte, a folded line: aiohttp's
    headers = RawHeaders()
    cl = None
    for field in fields.decode("utf-8", "surrogateescape").split("\r\n")[:-1]:
        name, _, value = field.partition(":")
        name = name.lower()
        value = value.strip(" \t")
        if name == "content-length":
            if cl is not None or not value.isdigit() or not value.isascii():
                return None  # repeated, signed or not a number: aiohttp refuses it
            cl = int(value)
        elif name in _HANDED:
            return None
        elif name not in headers:
            headers[name] = value
    if cl is None:
        return None
    minor = 1 if parts[2] == b"HTTP/1.1" else 0
    conn = headers.get("connection")
    if conn is None:
        keep = minor == 1
    else:
        tokens = {t.strip() for t in conn.lower().split(",")}
        if "upgrade" in tokens:
            return None
        keep = "close" not in tokens and (minor == 1 or "keep-alive" in tokens)
    return RawRequest(path, minor, headers, keep), cl


def answer_bytes(request: RawRequest, out: web.StreamResponse, keep: bool) -> bytes:
    """The whole answer to `request`: a WholeResponse's or web.Response's status, headers and
    body as one block, with the request's id when the answer has none."""
    if type(out) is WholeResponse:  # the relayed answer: its fields, not its properties
        status, headers, body = out._w_status, out._w_headers, out._w_body
    else:
        status, headers, body = out.status, out.headers, out.body
        if not isinstance(body, bytes | bytearray):  # a payload object: not a whole answer
            raise TypeError(f"cannot send {type(out).__name__} with body {type(body).__name__}")
    minor = request.version[1]
    lines = [
        b"HTTP/1.%d %d %s\r\nDate: %s\r\nContent-Length: %d\r\n"
        % (minor, status, _REASONS.get(status, b""), rfc822_formatted_time().encode(), len(body))
    ]
    for k, v in headers.items():
        if k.lower() not in _SKIP:
            lines.append(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))
    if "x-request-id" not in headers:
        rid = request.get(REQUEST_ID)
        if rid:
            lines.append(f"x-request-id: {rid}\r\n".encode("utf-8", "surrogateescape"))
    if not keep:
        lines.append(b"Connection: close\r\n")
    elif minor == 0:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
