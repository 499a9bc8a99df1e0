"""The router's short way for the two API routes (service.Router._handle, past aiohttp's URL
dispatch and middleware chain) and the whole answer written as one block
(router/lean_response.py): what an HTTP client sees must be what web.Response gave."""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_backend import FakeBackend
from fastdeploy_harness import MODEL, engine, router, wait_until

pytestmark = pytest.mark.timeout(60)
KEY = "sekret"


def _post(path: str, body: dict, version: str = "1.1", extra: str = "", key: str = KEY) -> bytes:
    raw = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/{version}\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n{extra}\r\n"
    ).encode() + raw


async def _answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status, *lines = head.split("\r\n")[:-2]
    headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def _healthy(session, url: str) -> bool:
    async with session.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"}) as r:
        return r.status == 200


async def test_whole_answers_on_one_kept_connection_match_a_plain_response(hosts, session):
    fake = await FakeBackend(tokens=4).start()
    try:
        r = await hosts(router([fake.url], None, api_key=KEY))
        assert await wait_until(lambda: _healthy(session, r.url))
        # count the requests that take aiohttp's own way (URL dispatch, middlewares)
        app_way = []
        rt = r.app["router"]
        usual = rt._app_handle

        async def counted(request):
            app_way.append(request.path)
            return await usual(request)

        rt._app_handle = counted
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
        # two answers on one keep-alive connection, the second with the client's id
        writer.write(_post("/v1/completions", body))
        writer.write(_post("/v1/completions", body, extra="x-request-id: mine-7\r\n"))
        st1, h1, b1 = await _answer(reader)
        st2, h2, b2 = await _answer(reader)
        assert st1 == st2 == "HTTP/1.1 200 OK"
        assert (
            json.loads(b1)["usage"]["completion_tokens"]
            == 4
            == len(json.loads(b2)["choices"][0]["text"])
        )
        assert h1["content-type"] == "application/json" and "date" in h1
        assert len(h1["x-request-id"]) == 32 and h2["x-request-id"] == "mine-7"
        assert "connection" not in h1  # kept open (HTTP/1.1's default)
        assert fake.headers[-1]["x-request-id"] == "mine-7"
        # an error on the short way: OpenAI-style, with the request id
        writer.write(_post("/v1/completions", {"model": MODEL}, extra="x-request-id: e-1\r\n"))
        st, h, b = await _answer(reader)
        assert st.startswith("HTTP/1.1 400") and h["x-request-id"] == "e-1"
        assert json.loads(b)["error"]["param"] == "prompt"
        # the API key is still checked
        writer.write(_post("/v1/completions", body, key="wrong"))
        st, h, b = await _answer(reader)
        assert st.startswith("HTTP/1.1 401") and json.loads(b)["error"]["code"] == "invalid_api_key"
        assert app_way == []  # all of it on the short way
        # the client asks to close: told so, and the connection ends after the answer
        writer.write(_post("/v1/completions", body, extra="Connection: close\r\n"))
        st, h, _ = await _answer(reader)
        assert st == "HTTP/1.1 200 OK" and h["connection"].lower() == "close"
        assert await reader.read() == b""
        writer.close()
        # HTTP/1.0 is answered in kind (and closed, as it did not ask to keep the connection)
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(_post("/v1/completions", body, version="1.0"))
        st, h, b = await _answer(reader)
        assert st == "HTTP/1.0 200 OK" and json.loads(b)["model"] == MODEL
        assert await reader.read() == b""
        writer.close()
        # other routes keep aiohttp's way (and the hook that gives them the request id)
        async with session.get(
            r.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}
        ) as g:
            assert g.status == 200 and (await g.json())["data"][0]["id"] == MODEL
        async with session.get(
            r.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}
        ) as g:
            assert g.status == 405 and g.headers["x-request-id"]
        assert app_way == ["/v1/models"]  # a GET of an API route is the short way's 405
    finally:
        await fake.stop()


async def _chunked(reader: asyncio.StreamReader) -> list[bytes]:
    """The chunks of a chunked body, up to the last (empty) one."""
    out = []
    while True:
        n = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        data = await reader.readexactly(n + 2)
        if n == 0:
            return out
        assert data.endswith(b"\r\n")
        out.append(data[:-2])


async def test_a_relayed_stream_is_chunked_and_keeps_the_connection(hosts, session):
    e = await hosts(engine(time_scale=0.0))
    r = await hosts(router([e.url], None, api_key=KEY))
    assert await wait_until(lambda: _healthy(session, r.url))
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 5, "stream": True}
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    for rid in ("s-1", "s-2"):  # two streams, one after the other on one connection
        writer.write(_post("/v1/completions", body, extra=f"x-request-id: {rid}\r\n"))
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        assert head.startswith("HTTP/1.1 200 OK\r\n")
        h = {k.lower(): v for k, _, v in (x.partition(": ") for x in head.split("\r\n")[1:-2])}
        assert h["transfer-encoding"] == "chunked" and h["x-request-id"] == rid
        assert h["content-type"].startswith("text/event-stream") and "connection" not in h
        events = b"".join(await _chunked(reader)).split(b"\n\n")
        data = [x for x in events if x.startswith(b"data: ") and x != b"data: [DONE]"]
        assert len(data) == 5 and events[-2] == b"data: [DONE]"
    writer.close()
    # HTTP/1.0: not chunked; the body ends with the connection
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(_post("/v1/completions", body, version="1.0"))
    raw = await reader.read()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"chunked" not in head.lower()
    assert rest.rstrip().endswith(b"data: [DONE]")  # and the connection ended (read() returned)
    writer.close()
