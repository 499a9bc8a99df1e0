"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from nexussched.localproc import REDIS_SERVER, LocalRedis, free_port
from nexussched.traces.loaders import known_trace_file


@pytest.fixture
def traces_dir():
    """Where the public traces are read from: ../shared/traces when present, else the copies
    shipped in the package (so no test skips for want of a trace)."""
    return known_trace_file("azure-conv").parent


# ---- a real redis-server per test (never the one on 6379) ------------------------------------
RedisProcess = LocalRedis  # the name the tests use


@pytest.fixture
def redis_proc():
    """A fresh redis-server for one test; `redis_proc.kill()/restart()` for fault tests."""
    if not shutil.which("redis-server") and not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed")
    rp = RedisProcess()
    try:
        yield rp
    finally:
        rp.stop()


# ---- nexussched servers (engine-sim, router) as real subprocesses on free ports -------------

REPO_ROOT = Path(__file__).resolve().parents[1]


class ServerProc:
    """`python -m nexussched.cli <args> --port P` as a subprocess; stderr goes to a temp file
    whose tail is shown when the server fails to start. kill()/restart() for failover tests."""

    def __init__(self, args: list[str], port: int | None = None) -> None:
        self.args = list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="nxs-srv-", suffix=".log", delete=False)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProc:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexussched.cli", *self.args, "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self._log.name).read_text()[-n:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30.0, path: str = "/health") -> ServerProc:
        """Until the server answers HTTP at all (a 503 from a router without backends counts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server {self.args[:1]} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1.0):
                    return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server {self.args[:1]} not up in {timeout} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProc:
        self.kill()
        return self.start()

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.stop()
        else:
            self.kill()  # teardown: no need to wait for a graceful shutdown
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


class ServerGroup:
    """Starts servers (all at once, then waits) and stops them all at teardown."""

    def __init__(self) -> None:
        self.procs: list[ServerProc] = []

    def __call__(self, *args: str, port: int | None = None, wait: bool = True) -> ServerProc:
        sp = ServerProc(list(args), port)
        self.procs.append(sp)
        return sp.wait_ready() if wait else sp

    def engines(self, n: int, *args: str) -> list[ServerProc]:
        eps = [self("engine-sim", *args, wait=False) for _ in range(n)]
        return [e.wait_ready() for e in eps]

    def close(self) -> None:
        for sp in self.procs:
            if sp.proc is not None and sp.proc.poll() is None:
                sp.proc.kill()  # all at once, then reap
        for sp in self.procs:
            sp.close()


@pytest.fixture
def spawn():
    """spawn('engine-sim', '--time-scale', '0') -> a running ServerProc, stopped after the test."""
    g = ServerGroup()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module")
def spawn_module():
    """Like `spawn`, shared by one test module."""
    g = ServerGroup()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
async def session():
    """One aiohttp client session per test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def hosts():
    """Start servers with `await hosts(coro)`; each is stopped after the test, last first."""
    started = []

    async def add(coro):
        h = await coro
        started.append(h)
        return h

    yield add
    for h in reversed(started):
        await h.stop()
