"""The access log: one line per request on the `nexussched.access` logger (INFO).

    rid=3f2a... model=m backend=e1 status=200 ttft_ms=41.2 e2e_ms=812.5 tokens=64 stream=1

`tokens` is the completion token count the engine reported (usage) when it did, else the number
of streamed token events; `-` when unknown (an error before any backend answered).
"""

from __future__ import annotations

import json
import logging
import re

log = logging.getLogger("nexussched.access")

_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_tokens(body: bytes) -> int | None:
    """completion_tokens of the last usage object in a response body or SSE chunk, if any."""
    found = None
    for m in _USAGE.finditer(body):
        found = m
    return int(found.group(1)) if found is not None else None


def token_events(chunk: bytes) -> int:
    """SSE events carrying tokens in a chunk (`data:` lines, less [DONE])."""
    return chunk.count(b"data: ") - chunk.count(b"data: [DONE]")


def _field(v: str, limit: int = 128) -> str:
    """A client-given value made safe for one log line: quoted when it has spaces or control
    characters, cut at `limit` characters."""
    if not v:
        return "-"
    if len(v) > limit:
        v = v[:limit] + "..."
    if v.isprintable() and " " not in v and '"' not in v:
        return v
    return json.dumps(v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000.0:.1f}"


def access_line(
    rid: str,
    model: str,
    backend: str,
    status: int,
    ttft: float | None,
    e2e: float,
    tokens: int | None,
    stream: bool,
) -> str:
    return (
        f"rid={_field(rid)} model={_field(model)} backend={_field(backend)} status={status} "
        f"ttft_ms={_ms(ttft)} e2e_ms={_ms(e2e)} tokens={'-' if tokens is None else tokens} "
        f"stream={int(stream)}"
    )
