"""A global-mode router started before its engine serves as soon as the engine is up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

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


@pytest.mark.timeout(120)
def test_node_registers_when_its_engine_comes_up_not_at_the_periodic_round(spawn, redis_proc):
    # keep-alive 900 s: the registry's periodic round comes every 300 s, after this test's
    # timeout, so a node that serves at all was registered when its backend came into rotation
    engine_port = free_port()
    router = spawn(
        "router", "--scheduler-name", "global", "--scheduler-port", str(redis_proc.port),
        "--scheduler-keepalive", "900", "--health-interval", "0.2",
        "--backend", f"http://127.0.0.1:{engine_port}",
    )  # fmt: skip
    assert _complete(router.url) == 503  # no engine yet: a clear 503, no hang
    spawn("engine-sim", "--time-scale", "0.05", port=engine_port)
    while (status := _complete(router.url)) != 200:
        assert status == 503, status  # until then: the same clear answer
        time.sleep(0.2)
