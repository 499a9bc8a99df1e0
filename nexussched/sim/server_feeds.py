"""engine-sim's two event feeds, step telemetry and KV events: bounded buffers that a client pages
through by index (`?since=N&limit=M`), served as JSON lines."""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aiohttp import web

from .server_requests import BadRequest

T = TypeVar("T")


class Feed(Generic[T]):
    """The newest `keep` events of a feed, numbered from 0 since the server started."""

    def __init__(self, keep: int) -> None:
        self._items: deque[T] = deque(maxlen=keep)
        self.total = 0  # events so far, kept or not

    def append(self, item: T) -> None:
        self._items.append(item)
        self.total += 1

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def response(
        self, request: web.Request, line: Callable[[T], object], prefix: str
    ) -> web.Response:
        """Events with index >= `since` (at most `limit`, oldest kept first), one JSON line each
        (`line` gives an event's JSON value). Headers: {prefix}-Next is the `since` for the next
        call, {prefix}-Total the events so far, {prefix}-Dropped the events asked for that the
        buffer no longer holds."""
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query.get("limit", "10000"))
        except ValueError:
            return BadRequest(400, "since and limit must be integers").response()
        total = self.total
        base = total - len(self._items)
        start = min(max(since, base, 0), total)
        stop = min(total, start + max(0, limit))
        text = "".join(
            json.dumps(line(x), separators=(",", ":")) + "\n"
            for x in itertools.islice(self._items, start - base, stop - base)
        )
        return web.Response(
            text=text,
            content_type="application/x-ndjson",
            headers={
                f"{prefix}-Next": str(stop),
                f"{prefix}-Total": str(total),
                f"{prefix}-Dropped": str(max(0, base - since)),
            },
        )
