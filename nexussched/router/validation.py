"""Reading a client's request before any field is looked at: size, time and shape limits that turn
hostile or broken input into a clear 4xx instead of a 500 or a stalled event loop.

- the body must arrive within `body_timeout` (a client that sends half a body and stalls gets 408);
- its JSON nesting depth is checked before parsing (json's recursive parser raises RecursionError
  on 10,000 levels; a limit of MAX_DEPTH is far above any OpenAI request);
- large bodies are parsed on a worker thread, so a 16 MB prompt does not hold every other stream;
- header values we forward upstream must be short printable ASCII (aiohttp refuses others when it
  sends them, which would surface as a 500).

Field-level checks (types of every field the router reads) live in requests.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping

from aiohttp import web

from .errors import APIError, bad_request

MAX_DEPTH = 64  # JSON nesting levels
_scan = json.JSONDecoder().scan_once  # (value, end) of the JSON value at an index
OFFLOAD_BYTES = 256 * 1024  # bodies above this are parsed on a thread
MAX_HEADER_VALUE = 1024  # characters of a forwarded header value
_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The raw body: 413 over `limit` bytes, 408 when it does not arrive within `timeout` s."""
    cl = request.content_length
    if cl is not None and cl > limit:
        raise APIError(
            413,
            f"request body of {cl} bytes exceeds the limit of {limit} bytes",
            code="request_too_large",
        )
    try:
        if request.content.is_eof():  # it all came with the headers (the usual case): no timer
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise APIError(
            413, f"request body exceeds the limit of {limit} bytes", code="request_too_large"
        ) from None
    except TimeoutError:
        raise APIError(
            408,
            f"request body not received within {timeout:g} s (--body-timeout)",
            code="request_timeout",
        ) from None


def nesting_depth_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if brackets nest deeper than `limit` outside JSON strings. Linear in the number of
    brackets, quotes and backslashes; stops at the first level past the limit."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot nest deeper than there are brackets
    depth = 0
    in_str = False
    skip_to = -1  # the character after a backslash inside a string is escaped
    for m in _SPECIAL.finditer(raw):
        i = m.start()
        if i < skip_to:
            continue
        c = raw[i]
        if in_str:
            if c == 0x5C:  # backslash
                skip_to = i + 2
            elif c == 0x22:  # closing quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):
            depth -= 1
    return False


def decode_json(raw: bytes, max_depth: int = MAX_DEPTH) -> object:
    """Parse a request body; 400 with the reason for anything that is not JSON we accept."""
    if nesting_depth_exceeds(raw, max_depth):
        raise bad_request(f"request body nests deeper than {max_depth} levels", code="invalid_json")
    try:
        if raw[:1] == b"{" and raw[1:2] != b"\x00":  # UTF-8 (json.loads would detect it so)
            s = raw.decode("utf-8", "surrogatepass")
            try:  # json's C scanner straight (json.loads: three Python frames around it)
                obj, end = _scan(s, 0)
            except StopIteration:
                end = -1
            if end == len(s):
                return obj
            return json.loads(s)  # white space after it, or an error: json's own message
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:  # also int strings past Python's digit limit
        raise bad_request(f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise bad_request("request body nests too deeply", code="invalid_json") from None


async def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> object:
    """decode_json, on a worker thread for a body over OFFLOAD_BYTES (keeps the loop free)."""
    if len(raw) > OFFLOAD_BYTES:
        return await asyncio.to_thread(decode_json, raw, max_depth)
    return decode_json(raw, max_depth)


def forward_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The request headers passed on to the engine; 400 for a value we could not send on."""
    out = {}
    for k in names:
        v = headers.get(k)
        if v is None:
            continue
        if len(v) > MAX_HEADER_VALUE or not _PRINTABLE.fullmatch(v):
            raise bad_request(
                f"header {k} must be printable ASCII of at most {MAX_HEADER_VALUE} characters",
                code="invalid_value",
            )
        out[k] = v
    return out
