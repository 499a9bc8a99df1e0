"""`nexussched router --workers 2 --backends-file F`: the admin API changes every worker's backends.
A POST or DELETE reaches one worker; it writes the change into F (under a lock) and answers once it
applied it; the other worker's watcher applies it too. Real processes: two engine-sims and a
two-worker router; one kept-alive connection per worker sees that worker's view."""

from __future__ import annotations

import http.client
import json
import time

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)
KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
MODEL = "sim-llama-3-8b"


def call(c: http.client.HTTPConnection, method: str, path: str, body: object = None):
    c.request(method, path, body=None if body is None else json.dumps(body), headers=AUTH)
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")


def view(c: http.client.HTTPConnection) -> dict[str, dict]:
    st, body = call(c, "GET", "/backends")
    assert st == 200
    return {b["name"]: b for b in body["backends"]}


def complete(c: http.client.HTTPConnection) -> int:
    st, _ = call(c, "POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    return st


def wait_for(pred, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.05)


def one_connection_per_worker(port: int) -> dict[int, http.client.HTTPConnection]:
    """Kept-alive connections, one landing on each worker (the kernel spreads new ones)."""
    conns: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        st, h = call(c, "GET", "/health")
        if h["worker"] in conns:
            c.close()
        else:
            conns[h["worker"]] = c
        if len(conns) == 2:
            return conns
    raise AssertionError(f"connections reached workers {sorted(conns)} only")


def test_admin_changes_reach_every_worker_through_the_backends_file(spawn, tmp_path):
    a = spawn("engine-sim", "--time-scale", "0")
    b = spawn("engine-sim", "--time-scale", "1")  # slow: a long stream there stays in flight
    f = tmp_path / "backends.yaml"
    f.write_text(f"backends:\n  - url: {a.url}\n    name: a\n")
    r = spawn(
        "router", "--backends-file", str(f), "--backends-file-poll", "0.1", "--workers", "2",
        "--policy", "round_robin", "--api-key", KEY, "--health-interval", "0.2",
    )  # fmt: skip
    try:
        conns = one_connection_per_worker(r.port)
        first, second = conns.values()
        st, body = call(first, "POST", "/backends", {"url": b.url, "name": "b"})
        assert st == 201 and body["backend"]["name"] == "b", body
        assert "b" in view(first)  # applied by the worker that answered before it answered
        assert yaml.safe_load(f.read_text())["backends"] == [
            {"url": a.url, "name": "a"},
            {"url": b.url, "name": "b"},
        ]
        # the same backend again, from the other worker: it is there already
        st, body = call(second, "POST", "/backends", {"url": b.url, "name": "b2"})
        assert st == 409 and body["error"]["code"] == "backend_exists", body
        for pid, c in conns.items():  # every worker sends requests to the new backend
            wait_for(lambda c=c: view(c).get("b", {}).get("healthy"), f"b healthy on {pid}")
            assert [complete(c) for _ in range(4)] == [200] * 4
            v = view(c)
            assert v["b"]["sent"] >= 2 and v["a"]["sent"] >= 2, (pid, v)

        # a long stream in flight on b (round robin: a few tries land one there)
        stream = None
        for _ in range(8):
            s = http.client.HTTPConnection("127.0.0.1", r.port, timeout=60)
            s.request(
                "POST", "/v1/completions", headers=AUTH,
                body=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 400,
                                 "ignore_eos": True, "stream": True}),
            )  # fmt: skip
            resp = s.getresponse()
            assert resp.status == 200
            if sum(view(c)["b"]["inflight"] for c in conns.values()) == 1:
                stream = resp
                break
            resp.read()  # it went to a (fast): done at once
            s.close()
        assert stream is not None, "no stream landed on b"

        # removed through the worker whose stream runs on b: it drains there
        (holder,) = [c for c in conns.values() if view(c)["b"]["inflight"] == 1]
        st, body = call(holder, "DELETE", "/backends/b")
        assert st == 202 and body["backend"]["state"] == "draining", body
        assert [e["name"] for e in yaml.safe_load(f.read_text())["backends"]] == ["a"]
        for pid, c in conns.items():  # every worker takes it out of rotation
            wait_for(lambda c=c: view(c).get("b", {}).get("state") != "active", f"b out on {pid}")
            sent_b = {k: v["sent"] for k, v in view(c).items()}.get("b", 0)
            assert [complete(c) for _ in range(6)] == [200] * 6
            assert {k: v["sent"] for k, v in view(c).items()}.get("b", 0) == sent_b
        # the stream that was running on b finished (drained), not cut
        events = [x for x in stream.read().decode().split("\n\n") if x.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and not any('"error"' in x for x in events)
        # a backend the file does not hold (or a second DELETE) cannot be removed
        st, body = call(first, "DELETE", "/backends/b")
        assert st == 404, body
    finally:
        r.stop()
    assert r.proc.returncode == 0 and "Traceback" not in r.log_tail(100_000)


def test_several_workers_without_a_backends_file_refuse_changes(spawn):
    a = spawn("engine-sim", "--time-scale", "0")
    r = spawn("router", "--backend", a.url, "--workers", "2", "--api-key", KEY)
    try:
        c = http.client.HTTPConnection("127.0.0.1", r.port, timeout=30)
        st, body = call(c, "POST", "/backends", {"url": "http://127.0.0.1:9"})
        assert st == 409 and "--backends-file" in body["error"]["message"], body
        st, body = call(c, "DELETE", f"/backends/{a.url}")
        assert st == 409 and "--backends-file" in body["error"]["message"], body
    finally:
        r.stop()


def test_edit_backends_file_keeps_format_and_mode_and_may_empty_it(tmp_path):
    import os

    from nexussched.router.backends_file import edit_backends_file
    from nexussched.router.config import backend_entry, load_backends_file

    f = tmp_path / "b.json"
    f.write_text(json.dumps([{"url": "http://10.0.0.1:8000", "name": "a"}]))
    os.chmod(f, 0o600)
    new = backend_entry({"url": "http://10.0.0.2:8000/v1", "api_key": "k", "models": ["m"]}, "x")
    edit_backends_file(f, lambda specs: [*specs, new])
    assert json.loads(f.read_text())["backends"][1] == {
        "url": "http://10.0.0.2:8000", "name": "10.0.0.2:8000", "api_key": "k", "models": ["m"],
    }  # fmt: skip
    assert load_backends_file(f)[1] == new and (f.stat().st_mode & 0o777) == 0o600

    def refuse(specs):
        raise LookupError("no")

    before = f.read_text()
    with pytest.raises(LookupError):
        edit_backends_file(f, refuse)
    assert f.read_text() == before  # a change that raises writes nothing
    edit_backends_file(f, lambda specs: [])
    assert load_backends_file(f, allow_empty=True) == []
    with pytest.raises(ValueError, match="non-empty"):
        load_backends_file(f)  # at start an empty file is still an error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.json.lock"]
