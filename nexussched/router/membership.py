"""Live membership: the admin API (`GET/POST/DELETE /backends`) and the watched backends file.

Backends join and leave without a restart. A joining backend is probed at once and takes requests
when its `/health` answers; a leaving one drains: requests in flight there finish, no new ones go
there. Only placement modes whose dispatcher addresses engines through the registry support it
(`Dispatcher.membership`); the others answer 409 and say why.

    POST /backends        {"url": "http://10.0.0.3:8000", "name": "...", "models": [...],
                           "api_key": "..."}             -> 201 {"backend": {...}}
    DELETE /backends/NAME (NAME or URL, url-quoted)      -> 202 {"backend": {..., "state":
                                                           "draining" | "removed"}}
    GET /backends                                        -> 200 {"backends": [...]}
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .backends import BackendRegistry
from .config import BackendSpec, backend_entry, load_backends_file
from .errors import APIError, bad_request

log = logging.getLogger("nexussched.router")


class BackendsAdmin:
    """The `/backends` handlers. `auth(request)` raises APIError(401) for a bad key;
    `refusal()` is None when membership may change, else why not."""

    def __init__(
        self,
        registry: BackendRegistry,
        auth: Callable[[web.Request], None],
        refusal: Callable[[], str | None],
    ) -> None:
        self.registry = registry
        self.auth = auth
        self.refusal = refusal

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/backends", self.list),
            web.post("/backends", self.add),
            web.delete("/backends/{key:.+}", self.remove),
        ]

    async def list(self, request: web.Request) -> web.Response:
        try:
            self.auth(request)
        except APIError as e:
            return e.response()
        return web.json_response({"backends": [b.state() for b in self.registry.listed()]})

    def _check(self, request: web.Request) -> None:
        self.auth(request)
        why = self.refusal()
        if why is not None:
            raise APIError(409, why, code="membership_fixed")

    async def add(self, request: web.Request) -> web.Response:
        try:
            self._check(request)
            try:
                body = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError) as e:
                raise bad_request(f"body is not valid JSON: {e}", code="invalid_json") from None
            if isinstance(body, str):
                body = {"url": body}
            try:
                spec = backend_entry(body, "backend")
            except ValueError as e:
                raise bad_request(str(e), code="invalid_value") from None
            try:
                idx = self.registry.add(spec)
            except ValueError as e:
                raise APIError(409, str(e), code="backend_exists") from None
        except APIError as e:
            return e.response()
        return web.json_response({"backend": self.registry.backends[idx].state()}, status=201)

    async def remove(self, request: web.Request) -> web.Response:
        try:
            self._check(request)
            key = request.match_info["key"]
            idx = self.registry.find(key)
            if idx is None:
                raise APIError(404, f"no backend named {key!r} (or at that URL)", code="not_found")
            self.registry.retire(idx)
        except APIError as e:
            return e.response()
        return web.json_response({"backend": self.registry.backends[idx].state()}, status=202)


class BackendsFileWatcher:
    """Applies changes of a backends file: entries that appear join, entries that go drain, an
    entry whose fields change leaves and joins again. Only the file's own backends are managed
    (those given by flags or the admin API stay). A file that does not parse changes nothing
    (one warning per bad version)."""

    def __init__(
        self,
        registry: BackendRegistry,
        path: str | Path,
        poll: float,
        refusal: Callable[[], str | None],
    ) -> None:
        self.registry = registry
        self.path = Path(path)
        self.poll = poll
        self.refusal = refusal
        self.managed: dict[str, BackendSpec] = {}  # url -> spec, from the file
        self._stamp: tuple[int, int] | None = None
        self.applied = 0  # versions of the file applied
        self.errors = 0  # versions that did not parse

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def start(self) -> None:
        """The file as read at start is what the router was given: manage those entries."""
        self._stamp = self._read_stamp()
        try:
            specs = load_backends_file(self.path)
        except (ValueError, OSError):
            return
        present = {b.url for b in self.registry.backends if not b.retired}
        self.managed = {s.url: s for s in specs if s.url in present}

    def check(self) -> bool:
        """Re-read the file if it changed; True when a change was applied."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            specs = load_backends_file(self.path)
        except (ValueError, OSError) as e:
            self.errors += 1
            log.warning("backends file not applied, backends unchanged: %s", e)
            return False
        why = self.refusal()
        if why is not None:
            log.warning("backends file changed but not applied: %s", why)
            return False
        self.apply({s.url: s for s in specs})
        self.applied += 1
        return True

    def apply(self, wanted: dict[str, BackendSpec]) -> None:
        reg = self.registry
        for url, spec in self.managed.items():
            if wanted.get(url) != spec:
                idx = reg.find(url)
                if idx is not None:
                    reg.retire(idx)
        managed: dict[str, BackendSpec] = {}
        for url, spec in wanted.items():
            if self.managed.get(url) == spec:
                managed[url] = spec
                continue
            try:
                reg.add(spec)
            except ValueError as e:  # already present by a flag or the admin API
                log.warning("backends file entry %s not added: %s", url, e)
                continue
            managed[url] = spec
        self.managed = managed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                self.check()
            except Exception as e:  # never let the watcher die on an odd file
                log.warning("backends file watcher: %r", e)
