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

With several worker processes (`--workers N`) each has its own registry, and a request reaches
one of them: POST and DELETE then go through the backends file (router/backends_file.py): the
change is written into it under a lock, this worker applies it before it answers, and every
other worker's watcher applies it within `--backends-file-poll` seconds. Without a backends file
they answer 409 and say to pass one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .backends import BackendRegistry
from .backends_file import edit_backends_file
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
        # set when changes go through the backends file (several workers): its watcher
        self.shared: BackendsFileWatcher | None = None

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
            if self.shared is not None:
                idx = await self._add_shared(spec)
            else:
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
            if self.shared is not None:
                await self._remove_shared(key, idx)
            else:
                self.registry.retire(idx)
        except APIError as e:
            return e.response()
        return web.json_response({"backend": self.registry.backends[idx].state()}, status=202)

    # ---- through the backends file (several workers) ---------------------------------------------
    async def _edit(self, change) -> None:
        """Write a change into the backends file, then apply the file here (the other workers'
        watchers apply it too)."""
        w = self.shared
        assert w is not None
        try:
            await asyncio.to_thread(edit_backends_file, w.path, change)
        except (ValueError, OSError) as e:  # unreadable or broken file: nothing was written
            raise APIError(
                409, f"backends file not changed: {e}", code="backends_file_error"
            ) from None
        w.check(force=True)

    async def _add_shared(self, spec: BackendSpec) -> int:
        try:
            self.registry.check_new(spec)
        except ValueError as e:
            raise APIError(409, str(e), code="backend_exists") from None

        def add(specs: list[BackendSpec]) -> list[BackendSpec]:
            for s in specs:
                if s.url == spec.url or s.name == spec.name:
                    what = "URL" if s.url == spec.url else "name"
                    raise LookupError(f"the backends file has a backend with that {what}")
            return [*specs, spec]

        try:
            await self._edit(add)
        except LookupError as e:
            raise APIError(409, str(e), code="backend_exists") from None
        idx = self.registry.find(spec.url)
        if idx is None:  # the file has it but this worker could not take it (see the log)
            raise APIError(409, f"backend {spec.url} was written but not applied", code="conflict")
        return idx

    async def _remove_shared(self, key: str, idx: int) -> None:
        b = self.registry.backends[idx]

        def remove(specs: list[BackendSpec]) -> list[BackendSpec]:
            kept = [s for s in specs if s.url != b.url]
            if len(kept) == len(specs):
                raise LookupError(
                    f"backend {b.name} was not given by the backends file (a --backend flag): "
                    "with several workers only the file's backends can be removed"
                )
            return kept

        try:
            await self._edit(remove)
        except LookupError as e:
            raise APIError(409, str(e), code="membership_fixed") from None
        if not b.retired:  # the file no longer has it, yet it stayed: the watcher said why
            raise APIError(409, f"backend {b.name} was removed from the file but stayed here",
                           code="conflict")  # fmt: skip


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
        self._stamp: bytes | None = None  # the file's bytes when last read
        self.applied = 0  # versions of the file applied
        self.errors = 0  # versions that did not parse

    def _read_stamp(self) -> bytes | None:
        """The file's bytes (a small file: comparing them misses no change, where a stamp of
        time and size may, for two writes in one clock tick)."""
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def start(self) -> None:
        """The file as read at start is what the router was given: manage those entries."""
        self._stamp = self._read_stamp()
        try:
            specs = load_backends_file(self.path, allow_empty=True)
        except (ValueError, OSError):
            return
        present = {b.url for b in self.registry.backends if not b.retired}
        self.managed = {s.url: s for s in specs if s.url in present}

    def check(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or when forced); True when a change was applied."""
        stamp = self._read_stamp()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            specs = load_backends_file(self.path, allow_empty=True)
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
