"""The composition root: builds a router replica from its settings.

Placement modes are registered here (`MODES`), so neither the HTTP service nor the dispatchers
import each other; FastDeploy's modes and PRISM's dispatcher are imported only when chosen.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

from aiohttp import web

from ..aio import serve_app, serve_workers
from .config import RouterSettings
from .dispatch import Dispatcher
from .policy_dispatch import PolicyDispatcher
from .raw_server import RawSite
from .service import Router

MODES: dict[str, Callable[..., Dispatcher]] = {
    "policy": PolicyDispatcher.from_settings,
}


def _fastdeploy_mode(name: str) -> Callable[..., Dispatcher]:
    """FastDeploy's scheduler modes (router/modes), imported only when chosen."""

    def factory(settings: RouterSettings, **kw: object) -> Dispatcher:
        from .modes import make_mode_dispatcher

        return make_mode_dispatcher(name, settings, **kw)

    return factory


MODES.update({n: _fastdeploy_mode(n) for n in ("local", "global", "splitwise")})


def _prism_mode(settings: RouterSettings, **kw: object) -> Dispatcher:
    from .prism_live import PrismDispatcher  # PRISM: engine telemetry + Redis state sharing

    return PrismDispatcher.from_settings(settings, **kw)


MODES["prism"] = _prism_mode


def make_dispatcher(settings: RouterSettings) -> Dispatcher:
    try:
        factory = MODES[settings.mode]
    except KeyError:
        raise ValueError(
            f"unknown router mode {settings.mode!r}; known: {', '.join(sorted(MODES))}"
        ) from None
    try:
        return factory(settings, **settings.mode_args)
    except TypeError as e:  # an unknown --mode-arg / --policy-arg name: one line, no traceback
        raise ValueError(
            f"router mode {settings.mode!r} (policy {settings.policy!r}): {_arg_error(e)}"
        ) from None


def _arg_error(e: TypeError) -> str:
    """`__init__() got an unexpected keyword argument 'x'` -> `unknown argument 'x'`."""
    text = str(e)
    if "unexpected keyword argument" in text:
        return "unknown argument " + text.rsplit("argument", 1)[1].strip()
    return text.split(") ", 1)[-1] if ") " in text else text


def create_app(settings: RouterSettings, dispatcher: Dispatcher | None = None) -> web.Application:
    """The router as an aiohttp Application (its Router is at app['router'])."""
    settings.validate()
    router = Router(settings, dispatcher or make_dispatcher(settings))
    app = router.app()
    with warnings.catch_warnings():  # a plain string key: app["router"] is the public handle
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["router"] = router
    return app


def router_site(
    runner: web.AppRunner, host: str, port: int, reuse_port: bool = False
) -> web.BaseSite:
    """The router's listening site: connections start on the raw server (raw_server.py) when its
    dispatcher answers only through relay() (FastDeploy's modes prepare their own streams: plain
    aiohttp for them). NEXUSSCHED_AIOHTTP_SERVER=1 serves everything with aiohttp (to compare)."""
    router: Router = runner.app["router"]
    reuse = reuse_port or None
    plain = os.environ.get("NEXUSSCHED_AIOHTTP_SERVER")
    if plain or not getattr(router.dispatcher, "relays", False):
        return web.TCPSite(runner, host, port, backlog=4096, reuse_port=reuse)
    s = router.settings
    return RawSite(
        runner,
        router.serve_raw,
        host,
        port,
        max_body=s.max_body_bytes,
        header_timeout=s.header_timeout,
        body_timeout=s.body_timeout,
        reuse_port=reuse,
    )


def run_app(
    app: web.Application,
    host: str,
    port: int,
    what: str,
    shutdown_timeout: float = 5.0,
    keepalive_timeout: float | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (the router drains in its on_shutdown hook first). A port in
    use (or any bind error) is a one-line ValueError."""
    return serve_app(
        app,
        host,
        port,
        what,
        shutdown_timeout,
        keepalive_timeout=keepalive_timeout,
        make_site=router_site,
    )


def run_router(settings: RouterSettings, what: str = "nexussched router") -> int:
    """Serve the router with `settings.workers` processes sharing the port (SO_REUSEPORT). Each
    worker is a replica of its own: placement state that must be shared goes through the Redis
    plane (PRISM's `redis`, FastDeploy's global mode), as between replicas on several hosts.
    --header-timeout is the connections' keep-alive limit (see aio.serve_app)."""
    app = create_app(settings)  # a bad policy or mode: ValueError before anything binds
    if settings.workers <= 1:
        return run_app(
            app, settings.host, settings.port, what, keepalive_timeout=settings.header_timeout
        )
    return serve_workers(
        lambda: create_app(settings),
        settings.host,
        settings.port,
        what,
        settings.workers,
        keepalive_timeout=settings.header_timeout,
        make_site=router_site,
    )
