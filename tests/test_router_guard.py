"""Bad input never gets a 500, the API key guards every endpoint but a bare /health, and the
server's own hygiene (header/body read timeouts, client strings keying nothing): a router and an
engine-sim as subprocesses on 127.0.0.1, driven over raw HTTP."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time

import pytest

from nexussched.localproc import free_ports

pytestmark = pytest.mark.timeout(180)

MODEL = "sim-llama-3-8b"
KEY = "k-123"
METRICS_KEY = "m-456"


@pytest.fixture(scope="module")
def stack(spawn_module):
    eport, rport = free_ports(2)
    engine = spawn_module("engine-sim", "--time-scale", "0", port=eport, wait=False)
    router = spawn_module(
        "router",
        "--backend",
        f"http://127.0.0.1:{eport}",
        "--api-key",
        KEY,
        "--metrics-api-key",
        METRICS_KEY,
        "--max-body-mb",
        "1",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--health-interval",
        "0.1",
        port=rport,
        wait=False,
    )
    engine.wait_ready()
    router.wait_ready()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if request(router.port, "GET", "/health", auth=KEY)[1].get("healthy_backends"):
            break
        time.sleep(0.05)
    return router


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    auth: str | None = KEY,
    timeout: float = 20.0,
) -> tuple[int, dict | None, str]:
    """(status, JSON body or None, content type); raises socket.timeout on a hang."""
    h = dict(headers or {})
    if auth is not None:
        h.setdefault("Authorization", f"Bearer {auth}")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        ct = r.getheader("Content-Type", "")
    finally:
        c.close()
    try:
        obj = json.loads(data) if data and "json" in ct else None
    except ValueError:
        obj = None
    return r.status, obj, ct


def post(port: int, body: object, headers: dict | None = None, path="/v1/completions", **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    return request(port, "POST", path, raw, h, **kw)


OK = {"model": MODEL, "prompt": "hi", "max_tokens": 2}

BAD_BODIES: list[tuple[str, bytes, dict]] = [
    ("xargs list + SLO header", json.dumps({**OK, "vllm_xargs": [1, 2]}).encode(),
     {"x-slo-ttft-ms": "500"}),
    ("xargs string + SLO field", json.dumps({**OK, "vllm_xargs": "a", "slo_ttft": 1}).encode(),
     {}),
    ("xargs pairs + priority header", json.dumps({**OK, "vllm_xargs": [["a", 1]]}).encode(),
     {"x-priority": "2"}),
    ("xargs number", json.dumps({**OK, "vllm_xargs": 3}).encode(), {}),
    ("nesting 10,000", b'{"model":"m","prompt":' + b"[" * 10_000 + b"]" * 10_000 + b"}", {}),
    ("nesting 100 in a field", json.dumps({**OK, "x": json.loads("[" * 100 + "]" * 100)}).encode(),
     {}),
    ("int of 5,000 digits", b'{"model":"m","prompt":"x","max_tokens":' + b"9" * 5000 + b"}", {}),
    ("lone surrogate model", b'{"model":"\\ud800","prompt":"x"}', {}),
    ("bad utf-8", b'{"model":"\xff\xfe","prompt":"x"}', {}),
    ("not json", b"{nope", {}),
    ("array body", b"[1,2]", {}),
    ("empty body", b"", {}),
    ("null body", b"null", {}),
    ("model number", json.dumps({"model": 3, "prompt": "x"}).encode(), {}),
    ("prompt object", json.dumps({"model": MODEL, "prompt": {"a": 1}}).encode(), {}),
    ("prompt empty list", json.dumps({"model": MODEL, "prompt": []}).encode(), {}),
    ("max_tokens string", json.dumps({**OK, "max_tokens": "5"}).encode(), {}),
    ("max_tokens NaN", b'{"model":"sim-llama-3-8b","prompt":"x","max_tokens":NaN}', {}),
    ("stream string", json.dumps({**OK, "stream": "yes"}).encode(), {}),
    ("slo_ttft negative", json.dumps({**OK, "slo_ttft": -1}).encode(), {}),
    ("slo_tpot Infinity", b'{"model":"sim-llama-3-8b","prompt":"x","slo_tpot":Infinity}', {}),
    ("priority float", json.dumps({**OK, "priority": 1.5}).encode(), {}),
    ("priority header junk", json.dumps(OK).encode(), {"x-priority": "high"}),
    ("slo header junk", json.dumps(OK).encode(), {"x-slo-ttft-ms": "nan"}),
    ("request id non-ascii", json.dumps(OK).encode(), {"x-request-id": "caf\u00e9"}),
    ("unknown model", json.dumps({**OK, "model": "x" * 100_000}).encode(), {}),
]  # fmt: skip


@pytest.mark.parametrize("name,raw,headers", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_body_is_a_json_4xx(stack, name, raw, headers):
    hdrs = {"Content-Type": "application/json"}
    for k, v in headers.items():  # http.client sends str headers as latin-1
        hdrs[k] = v.encode("utf-8").decode("latin-1")
    status, body, ct = request(stack.port, "POST", "/v1/completions", raw, hdrs)
    assert 400 <= status < 500, (name, status, body)
    assert body is not None and "message" in body["error"], (name, ct)
    status, body, _ = request(stack.port, "POST", "/v1/chat/completions", raw, hdrs)
    assert 400 <= status < 500 and body is not None, (name, status)


def test_good_body_still_served(stack):
    status, body, _ = post(stack.port, {**OK, "vllm_xargs": {"a": 1}}, {"x-slo-ttft-ms": "800"})
    assert status == 200 and body["choices"], body


# ---- auth and exposure -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/metrics", "/backends", "/v1/models", "/nope", "/scheduler"])
def test_every_endpoint_but_health_needs_the_key(stack, path):
    assert request(stack.port, "GET", path, auth=None)[0] == 401
    assert request(stack.port, "GET", path, auth="wrong")[0] == 401
    assert post(stack.port, OK, auth=None)[0] == 401


def test_health_is_open_but_bare(stack):
    status, body, _ = request(stack.port, "GET", "/health", auth=None)
    assert status == 200 and body == {"status": "ok"}
    status, body, _ = request(stack.port, "GET", "/health")
    assert body["healthy_backends"] == 1  # with the key: the details


def test_scheme_is_case_insensitive_and_metrics_has_its_own_key(stack):
    for scheme in ("bearer", "BEARER", "Bearer"):
        h = {"Authorization": f"{scheme} {KEY}"}
        assert post(stack.port, OK, h, auth=None)[0] == 200
    assert request(stack.port, "GET", "/metrics", auth=METRICS_KEY)[0] == 200
    assert request(stack.port, "GET", "/metrics", auth=KEY)[0] == 401
    assert request(stack.port, "GET", "/backends", auth=METRICS_KEY)[0] == 401
    assert request(stack.port, "GET", "/backends")[0] == 200


# ---- hygiene ---------------------------------------------------------------------------------
def test_half_sent_requests_are_closed(stack):
    """Slowloris: connections that never finish their headers (or body) are closed by the
    router (--header-timeout / --body-timeout 1 s here); none is held until the client gives up."""
    socks = []
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", stack.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
        socks.append(s)
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", stack.port))
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b'\r\nContent-Length: 1000\r\n\r\n{"model":'
        )  # body never ends
        socks.append(s)
    # wait on all at once, up to 15 s (far past both limits): still open then counts as held
    data = {sk: b"" for sk in socks}
    open_ = set(socks)
    deadline = time.monotonic() + 15.0
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], max(0.0, deadline - time.monotonic()))
        for sk in ready:
            try:
                got = sk.recv(65536)
            except OSError:
                got = b""
            if got:
                data[sk] += got
            else:
                open_.discard(sk)
    held = len(open_)
    answered_408 = sum(1 for sk in socks if data[sk].startswith(b"HTTP/1.1 408"))
    for sk in socks:
        sk.close()
    print(f"REPRO slowloris-60: held={held} answered_408={answered_408}")
    assert held == 0
    assert answered_408 == 30  # the half-sent bodies got a clear answer


def test_client_model_strings_key_no_router_state(hosts_router):
    """A client's model string must not key router state: with no backend listing its models
    (here: its only backend is down) any model name passes validation and reaches routing."""
    router, port = hosts_router
    for i in range(20):
        body = {"model": f"{i}" + "m" * 100_000, "prompt": "x"}
        status, err, _ = post(port, body, auth=None)
        assert status == 503 and err["error"]["code"] == "no_backend"
    print(f"REPRO model-cache-20: cached={len(router._views)}")
    assert len(router._views) == 0


@pytest.fixture
def hosts_router():
    """An in-process router (to look at its caches) whose only backend is down."""
    import asyncio
    import threading

    from fastdeploy_harness import Host

    from nexussched.router.compose import create_app
    from nexussched.router.config import BackendSpec, RouterSettings

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def main():
        (dead,) = free_ports(1)  # nothing listens there
        s = RouterSettings(backends=[BackendSpec(url=f"http://127.0.0.1:{dead}", name="e")])
        h = Host(create_app(s))
        await h.start()
        box.update(h=h)
        started.set()

    t = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()))
    t.start()
    assert started.wait(30)
    try:
        yield box["h"].app["router"], box["h"].port
    finally:

        async def stop():
            await box["h"].stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


# ---- property test: any body, any headers, every endpoint --------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIELDS = ["model", "prompt", "messages", "stream", "max_tokens", "max_completion_tokens",
          "vllm_xargs", "slo_ttft", "slo_tpot", "priority", "temperature", "n", "stop",
          "ignore_eos", "stream_options", "role", "content"]  # fmt: skip
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from([MODEL, "hi", "user", "assistant"])
)
_json = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), kids, max_size=5)
    ),
    max_leaves=20,
)
_bodies = (
    st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL]) | _scalars},
        optional={f: _json for f in FIELDS[1:]},
    ).map(lambda d: json.dumps(d).encode())
    | _json.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
)
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)
_headers = st.dictionaries(
    st.sampled_from(
        [
            "x-slo-ttft-ms",
            "x-slo-tpot-ms",
            "x-priority",
            "x-request-id",
            "Content-Type",
            "Accept",
            "Authorization",
        ]
    ),  # fmt: skip
    _header_text,
    max_size=4,
)
_endpoints = st.sampled_from(
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/completions"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/backends"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models"),
        ("GET", "/scheduler"),
        ("PUT", "/x/y"),
    ]  # fmt: skip
)


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(endpoint=_endpoints, body=_bodies, headers=_headers, auth=st.sampled_from([KEY, None, "x"]))
def test_property_no_5xx_and_no_hang_on_any_input(stack, endpoint, body, headers, auth):
    method, path = endpoint
    hdrs = {k: v for k, v in headers.items() if k != "Authorization"}
    if "Authorization" in headers:
        hdrs["Authorization"] = headers["Authorization"]
    elif auth is not None:
        hdrs["Authorization"] = f"Bearer {auth}"
    status, obj, ct = request(
        stack.port, method, path, body if method != "GET" else None, hdrs, auth=None, timeout=20
    )  # a hang raises TimeoutError here
    assert status < 500, (status, obj)
    if status >= 400 and "text/plain" not in ct:  # (aiohttp's HTTP parser answers plain 400s)
        assert obj is not None and "error" in obj, (status, ct)
