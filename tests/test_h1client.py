"""The router's data-plane HTTP/1.1 client (router/h1client.py) against real servers on 127.0.0.1:
an aiohttp app (as engine-sim is) and raw asyncio servers that answer with exact bytes (chunk
framing split anywhere, a body that runs until close, an engine that drops a kept-alive connection,
one that stalls)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from aiohttp import web

from nexussched.localproc import free_port
from nexussched.router.h1client import H1Pool
from nexussched.router.h1types import (
    ConnectFailed,
    IdleTimeout,
    Target,
    Timeouts,
    TotalTimeout,
    UpstreamBroken,
)

pytestmark = pytest.mark.timeout(60)
T = Timeouts(total=10.0, connect=2.0)


def head(path: str = "/v1/completions", host: str = "127.0.0.1") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()


async def aiohttp_server(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def raw_server(answer) -> tuple[asyncio.base_events.Server, str, list[int]]:
    """A server whose `answer(reader, writer, n)` writes the bytes of its n-th request's answer;
    returns (server, url, [requests per connection])."""
    conns: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k = len(conns)
        conns.append(0)
        try:
            while True:
                h = await reader.readuntil(b"\r\n\r\n")
                n = int(h.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                conns[k] += 1
                if await answer(reader, writer, conns[k]) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", conns


async def test_content_length_and_chunked_bodies_through_kept_alive_connections():
    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(
                {"echo": body["n"], "rid": request.headers.get("x-request-id")}
            )
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(5):
            await out.write(f"data: {i}\n\n".encode())
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    runner, url = await aiohttp_server(app)
    pool = H1Pool()
    target = Target.of(url)
    try:
        for n in range(20):
            h = head() + f"x-request-id: r{n}\r\n".encode()
            r = await pool.request(target, h, json.dumps({"n": n}).encode(), T)
            assert r.status == 200 and r.content_type.startswith("application/json")
            assert json.loads(await r.read()) == {"echo": n, "rid": f"r{n}"}
            r.release()
        # one connection served them all (each answer ended before the next request)
        assert pool.opened == 1
        r = await pool.request(target, head(), b'{"stream": true}', T)
        got = b""
        while chunk := await r.readany():
            got += chunk
        assert got == b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
        assert r.content_type == "text/event-stream" and pool.opened == 1
        # 8 at once need 8 connections; afterwards they are kept for reuse
        rs = await asyncio.gather(
            *[pool.request(target, head(), json.dumps({"n": n}).encode(), T) for n in range(8)]
        )
        assert [json.loads(await r.read())["echo"] for r in rs] == list(range(8))
        assert pool.opened == 8
    finally:
        pool.close()
        await runner.cleanup()


async def test_chunk_framing_split_at_every_byte_is_parsed():
    events = [b"data: {}\n\n" * k for k in (1, 3, 17)] + [b"x" * 5000]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\nX-T: 1\r\n\r\n"
    head_bytes = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    rng = random.Random(7)

    async def answer(reader, writer, n: int):
        data = head_bytes + wire
        i = 0
        while i < len(data):  # pieces of 1 to 40 bytes, each its own segment
            k = rng.randint(1, 40)
            writer.write(data[i : i + k])
            await writer.drain()
            await asyncio.sleep(0)
            i += k

    server, url, conns = await raw_server(answer)
    pool = H1Pool()
    try:
        for _ in range(3):
            r = await pool.request(Target.of(url), head(), b"{}", T)
            got = b""
            while chunk := await r.readany():
                got += chunk
            assert got == b"".join(events)
        assert conns == [3]  # the trailer was read: the connection was reused
    finally:
        pool.close()
        server.close()


async def test_a_body_that_runs_until_close_and_an_http_1_0_answer_are_not_reused():
    async def answer(reader, writer, n: int):
        writer.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}')
        await writer.drain()
        return False  # close: the end of the body

    server, url, conns = await raw_server(answer)
    pool = H1Pool()
    try:
        for _ in range(2):
            r = await pool.request(Target.of(url), head(), b"{}", T)
            assert json.loads(await r.read()) == {"a": 1}
        assert conns == [1, 1] and pool.opened == 2
    finally:
        pool.close()
        server.close()


async def test_a_kept_alive_connection_the_engine_drops_is_replaced_once_and_a_fresh_one_not():
    async def answer(reader, writer, n: int):
        if n > 1:  # the engine drops a kept-alive connection as the next request arrives
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server, url, conns = await raw_server(answer)
    pool = H1Pool()
    try:
        r = await pool.request(Target.of(url), head(), b"{}", T)
        assert await r.read() == b"ok"
        r = await pool.request(Target.of(url), head(), b"{}", T)  # sent twice: dropped, then new
        assert await r.read() == b"ok"
        assert conns == [2, 1] and pool.opened == 2
    finally:
        pool.close()
        server.close()

    async def drop(reader, writer, n: int):
        return False

    server, url, conns = await raw_server(drop)
    pool = H1Pool()
    try:  # a new connection that ends without an answer is the engine's failure: not re-sent
        with pytest.raises(UpstreamBroken, match="before a response"):
            await pool.request(Target.of(url), head(), b"{}", T)
        assert conns == [1]
    finally:
        pool.close()
        server.close()


async def test_refused_stalled_and_broken_engines_raise_what_the_router_maps():
    pool = H1Pool()
    try:
        with pytest.raises(ConnectFailed):
            await pool.request(Target.of(f"http://127.0.0.1:{free_port()}"), head(), b"{}", T)

        async def stall(reader, writer, n: int):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(30)

        server, url, _ = await raw_server(stall)
        r = await pool.request(Target.of(url), head(), b"{}", Timeouts(10.0, 2.0, idle=0.2))
        assert await r.readany() == b"hello"
        with pytest.raises(IdleTimeout):
            await r.readany()
        r = await pool.request(Target.of(url), head(), b"{}", Timeouts(0.3, 2.0))
        with pytest.raises(TotalTimeout):
            await r.read()
        server.close()

        async def broken(reader, writer, n: int):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            return False

        server, url, _ = await raw_server(broken)
        r = await pool.request(Target.of(url), head(), b"{}", T)
        with pytest.raises(UpstreamBroken, match="mid-body"):
            await r.read()

        async def garbage(reader, writer, n: int):
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await writer.drain()

        server2, url2, _ = await raw_server(garbage)
        with pytest.raises(UpstreamBroken, match="not an HTTP"):
            await pool.request(Target.of(url2), head(), b"{}", T)
        server.close()
        server2.close()
    finally:
        pool.close()


async def test_the_connection_limit_holds_requests_until_one_is_free():
    gate = asyncio.Event()
    inside = [0, 0]  # now, most at once

    async def answer(reader, writer, n: int):
        inside[0] += 1
        inside[1] = max(inside[1], inside[0])
        await gate.wait()
        inside[0] -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server, url, _ = await raw_server(answer)
    pool = H1Pool(limit=2)
    try:
        tasks = [
            asyncio.create_task(pool.request(Target.of(url), head(), b"{}", T)) for _ in range(5)
        ]
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert inside == [2, 2]
        gate.set()
        rs = await asyncio.gather(*tasks)
        assert [await r.read() for r in rs] == [b"ok"] * 5 and inside[1] == 2
    finally:
        pool.close()
        server.close()


async def test_bodies_larger_than_the_buffer_limit_arrive_whole():
    big = bytes(range(256)) * (3 * 4096)  # 3 MiB, three times HIGH_WATER

    async def answer(reader, writer, n: int):
        if n == 1:  # a whole answer (read() waits for all of it)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        else:  # a stream read slowly: reading pauses past the limit and resumes as it is taken
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(big), 65536):
                part = big[i : i + 65536]
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    server, url, conns = await raw_server(answer)
    pool = H1Pool()
    try:
        r = await pool.request(Target.of(url), head(), b"{}", Timeouts(30.0, 2.0))
        assert await r.read() == big
        r = await pool.request(Target.of(url), head(), b"{}", Timeouts(30.0, 2.0, idle=10.0))
        got = []
        while chunk := await r.readany():
            got.append(chunk)
            await asyncio.sleep(0.001)
        assert b"".join(got) == big and conns == [2]
    finally:
        pool.close()
        server.close()
