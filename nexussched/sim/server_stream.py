"""engine-sim's link between its engine loop and a request's HTTP handler (`Gen`), and the writer
of a streamed answer: the tokens the engine generated since the last wake-up, as vLLM's SSE
chunks, then the usage chunk and `[DONE]`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiohttp import web

from .request import SimRequest
from .server_responses import TOKEN_JSON


class Gen:
    """A request's link between the engine loop and its HTTP handler: the loop calls `wake()`
    when the request generated tokens or ended; the handler awaits `wait()`."""

    __slots__ = ("req", "stream", "seen", "fut", "done", "uid", "created")

    def __init__(self, req: SimRequest, stream: bool) -> None:
        self.req = req
        self.stream = stream
        # as vLLM: a random id (unique across engines and restarts) and the arrival's Unix time
        self.uid = uuid.uuid4().hex
        self.created = int(time.time())
        self.seen = 0  # tokens handed to the client
        self.fut: asyncio.Future | None = None
        self.done = False

    def wake(self) -> None:
        f = self.fut
        if f is not None and not f.done():
            f.set_result(None)

    async def wait(self) -> None:
        """Until the engine loop wakes this request."""
        self.fut = asyncio.get_running_loop().create_future()
        try:
            await self.fut
        finally:
            self.fut = None


async def write_stream(
    resp: web.StreamResponse,
    g: Gen,
    chat: bool,
    usage: bool,
    frames: tuple[str, bytes, bytes, bytes],
) -> None:
    """Stream g's tokens as they are generated until the request ends (`frames`: what
    server_responses.stream_frames gives), then the usage chunk (if asked) and `[DONE]`."""
    head, pre, mid, last = frames
    r = g.req
    if chat:  # vLLM opens a chat stream with the assistant role right away
        await resp.write(
            (
                "data: " + head + '{"index":0,"delta":{"role":"assistant",'
                '"content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            ).encode()
        )
    n_out = r.output
    base = r.id * 13
    nv = len(TOKEN_JSON)
    while True:
        gen = r.generated
        if gen > g.seen:
            parts = []
            for j in range(g.seen, gen):
                parts.append(pre)
                parts.append(TOKEN_JSON[(base + j * 7) % nv])
                parts.append(last if j == n_out - 1 else mid)
            g.seen = gen
            await resp.write(b"".join(parts))
        if g.done and g.seen >= n_out:
            break
        await g.wait()
    if usage:
        u = {
            "prompt_tokens": r.prompt,
            "total_tokens": r.prompt + n_out,
            "completion_tokens": n_out,
        }
        await resp.write(("data: " + head + '],"usage":' + json.dumps(u) + "}\n\n").encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
