"""The access log: one line per request on the `nexussched.access` logger (INFO).

    rid=3f2a... model=m backend=e1 status=200 ttft_ms=41.2 e2e_ms=812.5 tokens=64 stream=1

`tokens` is the completion token count the engine reported (usage) when it did, else the number
of streamed token events; `-` when unknown (an error before any backend answered).

The command line writes it through an `AccessHandler`: lines are buffered and written together
at most FLUSH_EVERY seconds apart (one write per batch, not one per request), and the router
hands it its line directly (`write_access`), skipping the LogRecord and Formatter that would cost
more than the rest of the line. Any other handler (a test's caplog, an embedding application's)
gets ordinary log records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from typing import TextIO

log = logging.getLogger("nexussched.access")
FLUSH_EVERY = 0.05  # seconds a line may wait in the buffer
FLUSH_LINES = 512  # lines that force a write at once

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


_SAFE: dict[str, str] = {}  # model and backend names as logged (a few, kept; bounded)


def _named(v: str) -> str:
    """_field of a model or backend name, remembered (the same few names on every line)."""
    out = _SAFE.get(v)
    if out is None:
        if len(_SAFE) >= 1024:  # a client's model strings: start over rather than grow
            _SAFE.clear()
        out = _SAFE[v] = _field(v)
    return out


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
    safe = rid and len(rid) <= 128 and rid.isprintable() and " " not in rid and '"' not in rid
    return (
        f"rid={rid if safe else _field(rid)} model={_SAFE.get(model) or _named(model)} "
        f"backend={_SAFE.get(backend) or _named(backend)} status={status} "
        f"ttft_ms={'-' if ttft is None else f'{ttft * 1000.0:.1f}'} e2e_ms={e2e * 1000.0:.1f} "
        f"tokens={'-' if tokens is None else tokens} stream={int(stream)}"
    )


class AccessHandler(logging.Handler):
    """Writes `<time> access <line>` lines (the time as logging's default asctime) to a stream,
    in batches: a write when FLUSH_LINES lines wait or FLUSH_EVERY s after the first of them
    (on the running event loop; without one, at once). flush() (app cleanup, logging's exit
    hook) writes what is left."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream if stream is not None else sys.stderr
        self._buf: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sec = -1
        self._stamp = ""

    def write_line(self, line: str) -> None:
        buf = self._buf
        t = time.time()  # (self._time(), inline: once a line)
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        buf.append(f"{self._stamp},{int((t - sec) * 1000):03d} access {line}\n")
        if len(buf) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_EVERY, self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(record.getMessage())
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        text = "".join(self._buf)
        self._buf.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the lines are lost, not the router
            pass


def write_access(line: str) -> None:
    """Log one access line: straight into the AccessHandler when it is the logger's only handler
    (the command line's set-up), else as an ordinary INFO record."""
    hs = log.handlers
    if len(hs) == 1 and type(hs[0]) is AccessHandler and not log.propagate:
        hs[0].write_line(line)
    else:
        log.info(line)


def flush_access() -> None:
    """Write out buffered access lines (a worker leaves with os._exit, skipping logging's own
    exit flush)."""
    for h in log.handlers:
        h.flush()


def use_access_handler(stream: TextIO | None = None) -> AccessHandler:
    """Send the access log to `stream` (stderr) through an AccessHandler, at INFO whatever the
    root logger's level, and not also to the root logger's handlers."""
    h = AccessHandler(stream)
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return h
