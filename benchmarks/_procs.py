"""Helpers for the router benchmarks: start nexussched servers as subprocesses on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nexussched.localproc import free_port  # noqa: F401  (re-exported for the benchmarks)

ROOT = Path(__file__).resolve().parents[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # answered: it is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


def start(args: list[str], port: int, root: Path = ROOT) -> subprocess.Popen:
    """`python -m nexussched.cli ARGS --port PORT` from the checkout at `root` (default: this one)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    # stderr to a file, not a pipe nobody reads: the router's access log would fill a pipe and
    # block the router after a few hundred requests
    p = subprocess.Popen(
        [sys.executable, "-m", "nexussched.cli", *args, "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=tempfile.TemporaryFile(),
    )
    return p


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
