"""Streams on the router's raw server (router/raw_stream.py): relayed as the engine's bytes come,
split anywhere (the first at once), the connection kept for the next request, a client that
leaves frees the engine and the router's count, errors before the first byte answered as JSON
and after it as an SSE error event ending the body cleanly, a client that does not read slows
the relay (no unbounded buffering), HTTP/1.0."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastdeploy_harness import MODEL, engine, engine_finished, wait_until
from raw_client import BODY, answer, post, raw_router

pytestmark = pytest.mark.timeout(60)
STREAM = dict(BODY, stream=True)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class ScriptedEngine:
    """A backend on a raw socket: /health answers ok; each POST /v1/completions waits for the
    test, which writes the answer's bytes itself (`take()` gives the connection's writer)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.posts: asyncio.Queue = asyncio.Queue()
        self.writers: set[asyncio.StreamWriter] = set()
        self.waits: list[asyncio.Event] = []

    async def start(self) -> ScriptedEngine:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def take(self) -> tuple[asyncio.StreamWriter, asyncio.Event]:
        """The next POST's writer, and the event to set once its answer was written."""
        return await asyncio.wait_for(self.posts.get(), 10)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                await reader.readexactly(n)
                if head.startswith(b"POST /v1/completions "):
                    answered = asyncio.Event()
                    self.waits.append(answered)
                    await self.posts.put((writer, answered))
                    await answered.wait()
                    if writer.is_closing():
                        return
                elif head.startswith(b"GET /health "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()
        for ev in self.waits:
            ev.set()


@pytest.fixture
async def scripted():
    e = await ScriptedEngine().start()
    yield e
    e.stop()
    await asyncio.sleep(0)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status, *lines = head.split("\r\n")[:-2]
    assert status.split()[1] == "200", head
    return {k.lower(): v for k, _, v in (x.partition(": ") for x in lines)}


async def _next_chunk(reader: asyncio.StreamReader) -> bytes:
    n = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10))[:-2], 16)
    return (await reader.readexactly(n + 2))[:-2]


async def test_a_stream_is_relayed_as_its_bytes_come_split_anywhere(
    hosts, session, scripted, caplog
):
    e = scripted
    r, raw = await raw_router(hosts, session, e.url)
    caplog.set_level(logging.INFO, logger="nexussched.access")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(STREAM, "x-request-id: split\r\n"))
    up, answered = await e.take()
    events = [
        b'data: {"choices":[{"index":0,"text":"a"}]}\n\n',
        b'data: {"choices":[{"index":0,"text":"b"}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n',
        b"data: [DONE]\n\n",
    ]
    framed = b"".join(_chunk(ev) for ev in events) + b"0\r\n\r\n"
    # the head and two bytes of the first event: the client gets those two bytes at once (the
    # router does not wait for the rest of the event, nor of the upstream chunk)
    cut = framed.index(b"da") + 2
    up.write(SSE_HEAD + framed[:cut])
    h = await _head(reader)
    assert h["transfer-encoding"] == "chunked" and h["x-request-id"] == "split"
    assert h["content-type"] == "text/event-stream"
    got = await _next_chunk(reader)
    assert got == b"da"
    # the rest in pieces that split chunk sizes, CRLFs and events anywhere
    body = b"".join(events)
    cuts = [cut, cut + 1, cut + 9, framed.index(b"\r\n", cut + 9) + 1, len(framed) - 4]
    for a, b in zip(cuts, cuts[1:] + [len(framed)], strict=True):
        up.write(framed[a:b])
        await up.drain()
        await asyncio.sleep(0.01)  # (apart, so the router reads them apart)
    while len(got) < len(body):
        got += await _next_chunk(reader)
    assert got == body
    assert await _next_chunk(reader) == b""  # the last chunk: the answer ended cleanly
    answered.set()
    # the connection serves the next request; the access line has the engine's usage count
    writer.write(post(STREAM, "x-request-id: next\r\n"))
    up, answered = await e.take()
    up.write(SSE_HEAD + framed)
    answered.set()
    h = await _head(reader)
    assert h["x-request-id"] == "next"
    writer.close()
    lines = [m for m in caplog.messages if m.startswith("rid=split ")]
    assert len(lines) == 1 and " status=200 " in lines[0]
    assert " tokens=7 " in lines[0] and lines[0].endswith(" stream=1")
    assert raw.handed == 0


async def test_requests_pipelined_around_streams_are_answered_in_order(hosts, session):
    e = await hosts(engine(time_scale=0.0))
    r, raw = await raw_router(hosts, session, e.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(
        post(STREAM, "x-request-id: s-1\r\n")
        + post(BODY, "x-request-id: w-1\r\n")
        + post(dict(STREAM, max_tokens=9), "x-request-id: s-2\r\n")
        + post(dict(BODY, stream=False), "x-request-id: w-2\r\n")
    )
    for rid, streamed, n in (("s-1", True, 4), ("w-1", False, 4), ("s-2", True, 9), ("w-2", False, 4)):  # fmt: skip
        status, h, b = await asyncio.wait_for(answer(reader), 10)
        assert status == 200 and h["x-request-id"] == rid
        if streamed:
            assert h["transfer-encoding"] == "chunked" and b.rstrip().endswith(b"[DONE]")
            texts = [x for x in b.split(b"\n\n") if x.startswith(b"data: {")]
            assert sum(bool(json.loads(x[6:])["choices"]) for x in texts) == n
        else:
            assert json.loads(b)["usage"]["completion_tokens"] == n
    writer.close()
    assert raw.handed == 0


async def test_a_client_that_leaves_mid_stream_frees_its_engine_and_slot(hosts, session, caplog):
    e = await hosts(engine(time_scale=1.0))  # real time: the stream runs for seconds
    r, raw = await raw_router(hosts, session, e.url)
    router = r.app["router"]
    caplog.set_level(logging.INFO, logger="nexussched.access")
    before = await engine_finished(session, e.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(dict(STREAM, max_tokens=2000), "x-request-id: gone\r\n"))
    await _head(reader)
    assert (await _next_chunk(reader)).startswith(b"data: ")
    assert router.backends[0].inflight == 1
    writer.close()
    assert await wait_until(lambda: router.backends[0].inflight == 0)
    assert router.runs.count(0) == 0

    async def aborted() -> bool:  # (the engine's finished count includes aborts)
        return await engine_finished(session, e.url) > before

    assert await wait_until(aborted), "the engine did not stop the abandoned request"
    assert await wait_until(lambda: any(m.startswith("rid=gone ") for m in caplog.messages))
    line = next(m for m in caplog.messages if m.startswith("rid=gone "))
    assert " status=499 " in line
    assert await wait_until(lambda: not raw.conns)  # gone from the server's books


async def test_errors_before_the_first_byte_are_json_after_it_an_sse_event(
    hosts, session, scripted
):
    e = scripted
    r, raw = await raw_router(hosts, session, e.url, retries=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    # the engine drops the connection before answering: a JSON error, and the connection stays
    writer.write(post(STREAM, "x-request-id: early\r\n"))
    up, answered = await e.take()
    up.close()
    answered.set()
    status, h, b = await asyncio.wait_for(answer(reader), 10)
    assert status in (502, 503) and h["x-request-id"] == "early"
    assert "transfer-encoding" not in h and h["content-type"].startswith("application/json")
    assert json.loads(b)["error"]["code"] in ("backend_failed", "no_backend")
    assert h.get("connection") != "close"
    # a break after the first event: the event, an SSE error event, and a clean end of the body
    assert await wait_until(lambda: router_healthy(r))
    writer.write(post(STREAM, "x-request-id: late\r\n"))
    up, answered = await e.take()
    first = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    up.write(SSE_HEAD + _chunk(first))
    await up.drain()
    h = await _head(reader)
    assert await _next_chunk(reader) == first
    up.close()
    answered.set()
    rest = b""
    while True:
        part = await _next_chunk(reader)
        if not part:
            break
        rest += part
    assert rest.startswith(b"data: ") and json.loads(rest[6:])["error"]["code"] == "backend_failed"
    # the connection still serves (the error ended the stream's body cleanly)
    assert await wait_until(lambda: router_healthy(r))
    writer.write(post(STREAM, "x-request-id: after\r\n"))
    up, answered = await e.take()
    up.write(SSE_HEAD + _chunk(first) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    answered.set()
    status, h, b = await asyncio.wait_for(answer(reader), 10)
    assert status == 200 and h["x-request-id"] == "after" and b.endswith(b"[DONE]\n\n")
    writer.close()
    assert raw.handed == 0


def router_healthy(r) -> bool:
    return r.app["router"].registry.healthy_count() == 1


async def test_a_client_that_does_not_read_holds_the_relay_back(hosts, session, scripted):
    e = scripted
    r, raw = await raw_router(hosts, session, e.url)
    router = r.app["router"]
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(STREAM, "x-request-id: slow\r\n"))
    up, answered = await e.take()
    piece = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"
    total = 512  # 32 MiB: far more than the sockets' buffers hold
    up.write(SSE_HEAD)

    async def feed() -> None:
        for _ in range(total):
            up.write(_chunk(piece))
            await up.drain()
        up.write(b"0\r\n\r\n")
        await up.drain()
        answered.set()

    feeding = asyncio.create_task(feed())
    try:
        (conn,) = raw.conns
        # the client reads nothing: the router's writes to it pause, and so does its reading of
        # the engine's answer (its upstream buffer fills, then the socket is not read)
        assert await wait_until(lambda: conn.write_paused)
        assert await wait_until(lambda: any(x._paused for x in router.pool._live))
        await asyncio.sleep(0.2)  # (time for any unbounded relay to show)
        # what waits in the router: at most about one upstream read past the high-water mark
        # (without back-pressure: most of the 32 MiB)
        assert conn.transport.get_write_buffer_size() < 4 << 20
        assert not feeding.done()
        # the client reads: all of it arrives, in order, and the engine's writes complete
        h = await _head(reader)
        assert h["x-request-id"] == "slow"
        got = bytearray()
        while True:
            part = await _next_chunk(reader)
            if not part:
                break
            got += part
        assert got == piece * total
        await asyncio.wait_for(feeding, 10)
    finally:
        feeding.cancel()
    writer.close()


async def test_http_1_0_streams_run_until_close(hosts, session):
    e = await hosts(engine(time_scale=0.0))
    r, raw = await raw_router(hosts, session, e.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(post(STREAM, "x-request-id: old\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    got = await asyncio.wait_for(reader.read(), 10)  # until the router closes it
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body.startswith(b"data: ") and body.endswith(b"data: [DONE]\n\n")
    assert MODEL.encode() in body
    writer.close()
    assert raw.handed == 0
