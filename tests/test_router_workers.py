"""`nexussched router --workers N`: N processes serve one port (SO_REUSEPORT)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from nexussched.cli import main


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # a new connection each time
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _complete(url: str) -> int:
    body = json.dumps({"model": "sim-llama-3-8b", "prompt": "hi", "max_tokens": 2}).encode()
    req = urllib.request.Request(
        url + "/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def test_two_workers_share_the_port_and_stop_together(spawn):
    e = spawn("engine-sim", "--time-scale", "0")
    r = spawn("router", "--backend", e.url, "--workers", "2", "--health-interval", "0.2")
    seen: dict[int, int] = {}
    for _ in range(400):
        status, h = _get(r.url + "/health")
        if status == 200:
            seen[h["worker"]] = seen.get(h["worker"], 0) + 1
        if len(seen) == 2 and min(seen.values()) >= 3:
            break
    # connections land on both processes: the parent and one forked worker
    assert len(seen) == 2 and r.proc.pid in seen, seen
    assert [_complete(r.url) for _ in range(20)] == [200] * 20
    (child,) = set(seen) - {r.proc.pid}
    r.stop()  # SIGTERM to the first: every worker stops
    assert r.proc.returncode == 0
    assert not Path(f"/proc/{child}").exists()
    log = r.log_tail(100_000)
    assert "Traceback" not in log
    # every completion has its access line, the forked worker's too (its batch is written when
    # it stops, though it leaves with os._exit)
    lines = [x for x in log.splitlines() if " access rid=" in x]
    assert len(lines) == 20 and all("status=200" in x for x in lines), lines


def test_workers_need_a_free_fixed_port(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cases = [
            (["--port", str(busy)], "cannot listen"),
            (["--port", "0"], "fixed --port"),
        ]
        for args, needle in cases:
            rc = main(["router", "--backend", "http://127.0.0.1:1", "--workers", "2", *args])
            lines = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(lines) == 1 and needle in lines[0], lines
    rc = main(["router", "--backend", "http://127.0.0.1:1", "--workers", "0"])
    assert rc == 2 and "workers" in capsys.readouterr().err
