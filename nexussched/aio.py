"""Event-loop start-up shared by the HTTP services (router, engine-sim)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web


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
    app: web.Application, host: str, port: int, banner: str, shutdown_timeout: float = 5.0
) -> int:
    """Serve until SIGINT/SIGTERM. A port in use (or any bind error) is a one-line ValueError."""

    async def main() -> None:
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
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
