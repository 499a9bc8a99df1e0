"""Request ids: the client's `x-request-id` when it gives a usable one, else one made here; kept
on the aiohttp request so that every answer (errors included) returns it."""

from __future__ import annotations

import itertools
import secrets

from aiohttp import web

from .errors import bad_request

REQUEST_ID = web.RequestKey("request_id", str)  # the request's id, kept on the request
MAX_REQUEST_ID = 128


class RequestIds:
    """Request ids made here: 32 hex digits, a random per-process prefix and a counter (unique
    across workers and restarts with overwhelming odds, and no random draw per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._n = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._n):016x}"

    def of(self, request: web.Request) -> str:
        """The client's x-request-id (up to 128 printable characters), else a new one; kept on
        the request so every answer, errors included, returns it."""
        rid = request.headers.get("x-request-id")
        if rid is not None and not (0 < len(rid) <= MAX_REQUEST_ID and rid.isprintable()):
            request[REQUEST_ID] = self.new()
            raise bad_request(
                f"x-request-id must be 1 to {MAX_REQUEST_ID} printable characters",
                code="invalid_value",
            )
        if not rid:
            rid = f"{self._prefix}{next(self._n):016x}"  # (self.new(), inline)
        request[REQUEST_ID] = rid
        return rid
