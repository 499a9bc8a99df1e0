"""A global-mode router started before its engine serves as soon as the engine is up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from nexussched.localproc import free_port


def _complete(url: str) -> int:
    body = json.dumps({"model": "sim-llama-3-8b", "prompt": "hello world", "max_tokens": 3})
    req = urllib.request.Request(
        url + "/v1/completions", data=body.encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_node_registers_soon_after_its_engine_comes_up(spawn, redis_proc):
    engine_port = free_port()
    router = spawn(
        "router", "--scheduler-name", "global", "--scheduler-port", str(redis_proc.port),
        "--health-interval", "0.2", "--backend", f"http://127.0.0.1:{engine_port}",
    )  # fmt: skip
    assert _complete(router.url) == 503  # no engine yet: a clear 503, no hang
    spawn("engine-sim", "--time-scale", "0.05", port=engine_port)
    t0 = time.monotonic()
    while _complete(router.url) != 200:
        # the registry's periodic round is keepalive/3 = 10 s; coming into rotation must not wait
        assert time.monotonic() - t0 < 5.0, "node not registered 5 s after its engine came up"
        time.sleep(0.2)
