"""Event-loop start-up shared by the HTTP services (router, engine-sim)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

# (runner, host, port, reuse_port) -> the listening site; TCPSite unless an app has its own
MakeSite = Callable[[web.AppRunner, str, int, bool], web.BaseSite]


def run_event_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, on uvloop when it is installed (less CPU per event; NEXUSSCHED_NO_UVLOOP=1
    turns it off)."""
    if not os.environ.get("NEXUSSCHED_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
    return asyncio.run(coro)


def serve_app(
    app: web.Application,
    host: str,
    port: int,
    banner: str,
    shutdown_timeout: float = 5.0,
    reuse_port: bool = False,
    keepalive_timeout: float | None = None,
    make_site: MakeSite | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. A port in use (or any bind error) is a one-line ValueError.

    keepalive_timeout also bounds how long a new connection may take to send its first request's
    headers (aiohttp closes a connection still waiting for them then): the slowloris guard."""
    kw = {} if keepalive_timeout is None else {"keepalive_timeout": keepalive_timeout}

    async def main() -> None:
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            **kw,
        )
        await runner.setup()
        if make_site is not None:
            site = make_site(runner, host, port, reuse_port)
        else:
            site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        print(f"{banner} listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    run_event_loop(main())
    return 0


def serve_workers(
    make_app: Callable[[], web.Application],
    host: str,
    port: int,
    banner: str,
    workers: int,
    shutdown_timeout: float = 5.0,
    keepalive_timeout: float | None = None,
    make_site: MakeSite | None = None,
) -> int:
    """Serve `workers` processes on one port (SO_REUSEPORT: the kernel spreads connections over
    them). Each process builds its own app after the fork; SIGINT/SIGTERM to the first stops all.
    The port is checked free (without SO_REUSEPORT) first, so a taken port is a one-line error,
    not a silent share with a stranger."""
    if workers <= 1:
        return serve_app(
            make_app(),
            host,
            port,
            banner,
            shutdown_timeout,
            keepalive_timeout=keepalive_timeout,
            make_site=make_site,
        )
    if port == 0:
        raise ValueError("--workers needs a fixed --port (the workers share it)")
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    finally:
        probe.close()
    children: list[int] = []
    for k in range(1, workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve until told to stop, then leave without running atexit
            code = 1
            try:
                code = serve_app(
                    make_app(),
                    host,
                    port,
                    f"{banner} (worker {k})",
                    shutdown_timeout,
                    True,
                    keepalive_timeout,
                    make_site,
                )
            finally:
                os._exit(code)
        children.append(pid)
    try:
        return serve_app(
            make_app(),
            host,
            port,
            f"{banner} (worker 0)",
            shutdown_timeout,
            True,
            keepalive_timeout,
            make_site,
        )
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
