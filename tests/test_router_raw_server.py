"""The router's raw server for the two API routes (router/raw_server.py, raw_http.py): pipelined
and split requests answered in order, bad heads and everything it does not serve handed to
aiohttp on the same connection (aiohttp's answers, never a 500 or a hang), the body limit."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from fake_backend import FakeBackend
from fastdeploy_harness import MODEL, engine
from raw_client import BODY, answer, post, raw_router

from nexussched.router.raw_http import parse_head

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake():
    f = await FakeBackend(tokens=4).start()
    yield f
    await f.stop()


async def test_pipelined_and_split_requests_are_answered_in_order(hosts, session, fake):
    r, raw = await raw_router(hosts, session, fake.url, api_key="k1")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    # the key is checked (the header's name in any case); a wrong one is a 401, kept alive
    writer.write(post(BODY, "authorization: Bearer k2\r\n"))
    status, h, b = await answer(reader)
    assert status == 401 and json.loads(b)["error"]["code"] == "invalid_api_key"
    writer.write(post(BODY, "AUTHORIZATION: bearer k1\r\nx-request-id: key\r\n"))
    status, h, b = await answer(reader)
    assert status == 200 and h["x-request-id"] == "key"
    fake.hits = 0
    # three requests in one write, answered in the order sent, each with its own id
    writer.write(b"".join(post(BODY, f"x-request-id: p-{i}\r\n") for i in range(3)))
    for i in range(3):
        status, h, b = await answer(reader)
        assert status == 200 and h["x-request-id"] == f"p-{i}"
        assert json.loads(b)["usage"]["completion_tokens"] == 4
    # one request a few bytes at a time (head and body split anywhere), then two more in a
    # write that also carries the first bytes of a fourth
    one = post(BODY, "x-request-id: split\r\n")
    for k in range(0, len(one), 7):
        writer.write(one[k : k + 7])
        await writer.drain()
        await asyncio.sleep(0)
    status, h, _ = await answer(reader)
    assert status == 200 and h["x-request-id"] == "split"
    last = post(BODY, "x-request-id: tail\r\n")
    writer.write(post(BODY, "x-request-id: a\r\n") + post(BODY, "x-request-id: b\r\n") + last[:30])
    assert [(await answer(reader))[1]["x-request-id"] for _ in range(2)] == ["a", "b"]
    writer.write(last[30:])
    assert (await answer(reader))[1]["x-request-id"] == "tail"
    writer.close()
    assert raw.handed == 0 and fake.hits == 7  # all of it on the raw server


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length : 2\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: -2\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nX: a\nb\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nX: \x01\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/completions HTTP/9.9\r\nContent-Length: 2\r\n\r\n{}",
        b"POST  /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    ],
    ids=[
        "two-lengths",
        "space-before-colon",
        "negative-length",
        "bare-lf",
        "control-byte",
        "folded",
        "version",
        "double-space",
        "huge-head",
        "tls-hello",
    ],  # fmt: skip
)
async def test_a_head_it_does_not_serve_gets_aiohttps_answer(hosts, session, fake, head):
    r, raw = await raw_router(hosts, session, fake.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(head)
    got = await asyncio.wait_for(reader.read(), 10)  # answered and closed: never held open
    # aiohttp's 4xx (it answers a head it cannot parse as HTTP/1.0), or a plain close
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", got) or got == b"", got[:200]
    writer.close()
    assert raw.handed == 1 and fake.hits == 0
    # the server still serves
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(BODY))
    assert (await answer(reader))[0] == 200
    writer.close()


async def test_other_routes_hand_the_connection_to_aiohttp_and_streams_stay(hosts, session):
    e = await hosts(engine(time_scale=0.0))
    r, raw = await raw_router(hosts, session, e.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    stream = dict(BODY, stream=True)
    writer.write(
        post(BODY, "x-request-id: whole-1\r\n")  # the raw server's
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"  # aiohttp's from here on
        + post(stream, "x-request-id: s-1\r\n")
        + post(BODY, "x-request-id: whole-2\r\n")
    )
    status, h, _ = await answer(reader)
    assert status == 200 and h["x-request-id"] == "whole-1"
    status, _, b = await answer(reader)
    assert status == 200 and json.loads(b)["data"][0]["id"] == MODEL
    status, h, b = await answer(reader)
    assert status == 200 and h["x-request-id"] == "s-1" and b.rstrip().endswith(b"[DONE]")
    status, h, b = await answer(reader)
    assert status == 200 and h["x-request-id"] == "whole-2" and json.loads(b)["choices"]
    writer.close()
    assert raw.handed == 1
    # a stream on a fresh connection is served on the raw server (the stream flag spelt any way
    # JSON allows), and the connection serves the next request after it
    hidden = json.dumps(BODY).encode()[:-1] + b', "\\u0073tream": true}'
    for body in (json.dumps(stream).encode(), hidden):
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(post(body, "x-request-id: s-2\r\n") + post(BODY))
        status, h, b = await answer(reader)
        assert status == 200 and h["transfer-encoding"] == "chunked" and b"data: " in b
        assert h["x-request-id"] == "s-2" and b.rstrip().endswith(b"[DONE]")
        assert (await answer(reader))[0] == 200
        writer.close()
    assert raw.handed == 1


async def test_chunked_bodies_expect_and_query_strings_go_to_aiohttp(hosts, session, fake):
    r, raw = await raw_router(hosts, session, fake.url)
    body = json.dumps(BODY).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    status, _, b = await answer(reader)
    assert status == 200 and json.loads(b)["usage"]["completion_tokens"] == 4
    writer.close()
    async with (
        aiohttp.ClientSession() as fresh,
        fresh.post(  # (a connection of its own)
            r.url + "/v1/completions?x=1", json=BODY, headers={"Expect": "100-continue"}
        ) as g,
    ):
        assert g.status == 200
    assert raw.handed == 2 and fake.hits == 2


async def test_a_body_over_the_limit_is_refused_unread(hosts, session, fake):
    r, raw = await raw_router(hosts, session, fake.url, max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(b'{"prompt": "' + b"x" * 2000 + b'"}', "x-request-id: big\r\n")[:300])
    status, h, b = await asyncio.wait_for(answer(reader), 10)  # before the body came
    assert status == 413 and h["connection"] == "close" and h["x-request-id"] == "big"
    assert json.loads(b)["error"]["code"] == "request_too_large"
    assert await reader.read() == b""  # closed: the unread body cannot be taken as a request
    writer.close()
    # at the limit exactly: read and served
    prompt = "y" * (1000 - len(json.dumps(dict(BODY, prompt=""))))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(dict(BODY, prompt=prompt)))
    assert (await answer(reader))[0] == 200
    writer.close()
    assert raw.handed == 0 and fake.hits == 1


def test_parse_head_keep_alive_and_header_case():
    req, cl = parse_head(
        b"POST /v1/chat/completions HTTP/1.0\r\nConnection: Keep-Alive\r\n"
        b"AUTHORIZATION: Bearer k\r\nx-request-id: one\r\nX-Request-Id: two\r\n"
        b"Content-Length:  17 \r\n"
    )
    assert cl == 17 and req.path == "/v1/chat/completions" and req.keep_alive
    # by lower-case name (the router looks them up so), the first of repeated ones as aiohttp
    assert req.headers == {"connection": "Keep-Alive", "authorization": "Bearer k",
                           "x-request-id": "one"}  # fmt: skip
    h11 = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 0\r\n"
    assert parse_head(h11)[0].keep_alive
    assert not parse_head(h11 + b"Connection: close\r\n")[0].keep_alive
    assert not parse_head(h11.replace(b"1.1", b"1.0"))[0].keep_alive
    for handed in (b"Connection: Upgrade\r\n", b"Expect: 100-continue\r\n", b"Upgrade: h2c\r\n"):
        assert parse_head(h11 + handed) is None
    assert parse_head(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n") is None  # no length


async def test_a_handler_bug_is_a_500_and_a_closed_connection(hosts, session, fake):
    r, raw = await raw_router(hosts, session, fake.url)

    async def broken(req):
        raise RuntimeError("planted")

    raw.handler = broken
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(BODY) + post(BODY))  # the second is never answered: the first closes
    status, h, b = await asyncio.wait_for(answer(reader), 10)
    assert status == 500 and h["connection"] == "close"
    assert json.loads(b)["error"]["code"] == "internal_error"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_shutdown_closes_idle_connections_and_ends_busy_ones_after_their_answer(
    hosts, session
):
    e = await hosts(engine(time_scale=1.0))  # answers take real time: one is in flight
    r, raw = await raw_router(hosts, session, e.url)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", r.port)
    idle_w.write(post(BODY))
    assert (await answer(idle_r))[0] == 200  # kept alive, now idle
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", r.port)
    busy_w.write(post(dict(BODY, max_tokens=40)))
    while not any(c.busy for c in raw.conns):
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(r.stop())  # the listening socket, then the drain
    assert await asyncio.wait_for(idle_r.read(), 10) == b""  # closed at once
    status, h, b = await asyncio.wait_for(answer(busy_r), 30)  # the drain let it finish
    assert status == 200 and h["connection"] == "close"
    assert json.loads(b)["usage"]["completion_tokens"] == 40
    await stopping
    idle_w.close()
    busy_w.close()
