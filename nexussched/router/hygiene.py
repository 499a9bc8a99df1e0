"""Server hygiene around every handler: access control, no unexpected exception answered as a
plain-text 500, client disconnects counted, and a graceful drain on shutdown.

Drain (SIGTERM): the listening socket closes first (aiohttp), then `drain()` waits up to the drain
timeout for the requests in flight; those still running are then stopped, and a stream that had
started ends with an SSE error event instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .auth import AccessPolicy
from .errors import APIError
from .inflight import current_task_of

log = logging.getLogger("nexussched.router")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# where on_response_prepare leaves the response a handler started
STREAM_KEY = (
    web.RequestKey("nxs_stream", web.StreamResponse) if hasattr(web, "RequestKey") else "nxs_stream"
)


class Guard:
    """The router's middleware and the set of API requests in flight (for the drain)."""

    def __init__(self, access: AccessPolicy, on_disconnect: Callable[[], None]) -> None:
        self.access = access
        self._open = not access.enabled  # no key set: nothing to check per request
        self.on_disconnect = on_disconnect
        self.active: dict[asyncio.Task, web.Request] = {}
        self._stopping: set[asyncio.Task] = set()
        self.draining = False
        # the serving loop (set at start-up): current_task(loop) spares
        # asyncio.get_running_loop(), a getpid() system call on Python 3.11
        self.loop: asyncio.AbstractEventLoop | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        loop = self.loop
        task = current_task_of(loop) if loop is not None else asyncio.current_task()
        try:
            if not self._open:
                self.access.check(request)
            if self.draining and request.path.startswith("/v1/") and request.method == "POST":
                raise APIError(503, "the router is shutting down", code="shutting_down")
            if task is not None:
                self.active[task] = request
            return await handler(request)
        except APIError as e:
            return e.response()
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            if task is not None and task in self._stopping:
                return await self._stopped(request, task)
            self.on_disconnect()  # the client went away (handler cancellation)
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return APIError(
                500, "internal error in the router (logged)", code="internal_error"
            ).response()
        finally:
            if task is not None:
                self.active.pop(task, None)
                self._stopping.discard(task)

    async def _stopped(self, request: web.Request, task: asyncio.Task) -> web.StreamResponse:
        task.uncancel()
        err = APIError(
            503, "the router shut down before this request completed", code="shutting_down"
        )
        resp = request.get(STREAM_KEY)
        if isinstance(resp, web.StreamResponse) and resp.prepared:
            try:
                await resp.write(err.sse_event())
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return resp
        return err.response()

    @staticmethod
    async def remember_stream(request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: keep the response a handler started, to end it cleanly."""
        request[STREAM_KEY] = response

    async def drain(self, timeout: float) -> int:
        """Refuse new requests, wait up to `timeout` s for those in flight, then stop the rest
        (each gets an error: an SSE error event once its stream started). Returns how many."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        left = list(self.active)
        for t in left:
            self._stopping.add(t)
            t.cancel()
        if left:
            await asyncio.wait(left, timeout=5.0)
        return len(left)
