"""A raw HTTP/1.1 client for the router's raw server tests (test_router_raw_server.py,
test_router_raw_stream.py): requests as bytes, answers read off the socket (Content-Length or
chunked), and a router on the raw server in front of one backend."""

from __future__ import annotations

import asyncio
import json

from fastdeploy_harness import MODEL, router, wait_until

from nexussched.router.raw_server import RawSite

BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 4}


def post(body: dict | bytes, extra: str = "", path: str = "/v1/completions") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if "uthorization" not in extra.lower():
        extra += "Authorization: Bearer k1\r\n"  # (the key of the test that sets one)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n{extra}\r\n"
    ).encode() + raw


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status, *lines = head.split("\r\n")[:-2]
    headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            n = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            body += (await reader.readexactly(n + 2))[:-2]
            if n == 0:
                break
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


async def raw_router(hosts, session, backend: str, **kw):
    r = await hosts(router([backend], None, **kw))

    async def healthy() -> bool:
        async with session.get(r.url + "/health") as g:
            return g.status == 200

    assert await wait_until(healthy)
    assert isinstance(r.site, RawSite) and r.site.raw is not None
    r.site.raw.handed = 0  # (the health checks above were handed over)
    return r, r.site.raw
