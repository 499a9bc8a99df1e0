"""Pieces the FastDeploy modes share: a backend seen as a node that pulls work, the request
payload that travels through the plane, SSE event splitting, and answering the client from
events with duplicates dropped."""

from __future__ import annotations

import codecs
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from ..dispatch import ProxyCall
from ..errors import APIError


class NodeView:
    """A backend as FastDeploy's resource check sees it (the EngineView contract): scraped load
    plus the requests this router handed the engine that it has not visibly taken yet (no first
    byte, and no scrape since they were sent showing an empty waiting queue). An engine pulls only
    when that is zero, as a FastDeploy engine asks for work only once it has consumed what it was
    given."""

    __slots__ = ("b", "node")

    def __init__(self, backend, node: NodeState) -> None:
        self.b = backend
        self.node = node

    @property
    def name(self) -> str:
        return self.b.name

    @property
    def healthy(self) -> bool:
        return self.b.healthy

    @property
    def num_running(self) -> int:
        return self.b.num_running

    @property
    def num_waiting(self) -> int:
        return min(self.b.num_waiting, self.node.not_started()) + self.node.unconfirmed(self.b)

    @property
    def kv_usage(self) -> float:
        return self.b.kv_usage

    @property
    def inflight(self) -> int:
        return self.b.inflight

    @property
    def last_scrape(self) -> float:
        return self.b.last_scrape

    @property
    def num_gpu_blocks(self) -> int:
        # vllm:cache_config_info when the engine exports it, else the mode's assumption
        return self.b.num_gpu_blocks or self.node.kv_blocks

    @property
    def block_size(self) -> int:
        return self.b.block_size or self.node.block_size

    @property
    def inflight_prompt_tokens(self) -> int:
        return self.b.inflight_prompt_tokens

    @property
    def inflight_max_tokens(self) -> int:
        return self.b.inflight_max_tokens


class NodeState:
    """What a node handed its engine: send times of requests not yet confirmed taken, and the
    requests that have not started answering (no first byte yet)."""

    def __init__(self, kv_blocks: int, block_size: int) -> None:
        self.kv_blocks = kv_blocks
        self.block_size = block_size
        self._sent: dict[object, float] = {}
        self._open: set[object] = set()

    def sent(self, key: object) -> None:
        self._sent[key] = time.monotonic()
        self._open.add(key)

    def confirm(self, key: object) -> None:
        self._sent.pop(key, None)
        self._open.discard(key)

    def not_started(self) -> int:
        """Requests sent that have not answered yet: a bound on the engine's waiting queue
        (only this router feeds it) that is never stale, unlike the scraped gauge."""
        return len(self._open)

    def unconfirmed(self, backend) -> int:
        if not self._sent:
            return 0
        if backend.num_waiting == 0:
            seen = backend.last_scrape
            for k in [k for k, t in self._sent.items() if t < seen]:
                del self._sent[k]
        return len(self._sent)


@dataclass(slots=True)
class Payload:
    """A client request as it travels through the plane."""

    path: str
    body: str
    stream: bool
    prompt_tokens: int
    max_tokens: int
    model: str
    headers: dict = field(default_factory=dict)
    t0: float = 0.0  # wall time of receipt
    # splitwise
    decode_node: str = ""
    kv_transfer_params: dict | None = None

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Payload:
        return cls(**json.loads(text))

    @classmethod
    def of(cls, call: ProxyCall) -> Payload:
        return cls(
            call.path,
            call.raw.decode("utf-8", errors="replace"),
            call.stream,
            call.info.prompt_tokens,
            call.info.max_tokens,
            call.model,
            dict(call.forward_headers),
            time.time(),
        )

    def call(self, body: bytes | None = None) -> ProxyCall:
        """A ProxyCall for RouterCore.open_upstream (no client request attached)."""
        from ..policies import RequestInfo

        raw = body if body is not None else self.body.encode()
        info = RequestInfo(0, self.prompt_tokens, self.max_tokens, time.monotonic(), 0.0, 0.0)
        return ProxyCall(
            None,
            self.path,
            raw,
            {},
            info,
            self.stream,
            self.model,  # type: ignore[arg-type]
            time.monotonic(),
            self.headers,
        )


class SSESplitter:
    """Bytes of an event stream -> complete events (text ending in a blank line)."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""

    def feed(self, data: bytes) -> list[str]:
        self._buf += self._dec.decode(data)
        out = []
        while True:
            i = self._buf.find("\n\n")
            if i < 0:
                break
            out.append(self._buf[: i + 2])
            self._buf = self._buf[i + 2 :]
        return out

    def rest(self) -> str:
        tail = self._buf + self._dec.decode(b"", final=True)
        self._buf = ""
        return tail


class GenerationLost(Exception):
    """The run whose events already reached the client is gone (its engine or node failed, or
    its events were lost): continuing with another run would splice two generations into one
    answer, so the stream must end with an error instead."""


class ClientAnswer:
    """Answers one client from response events that may arrive more than once or from more than
    one attempt. Exactly one generation per answer: before anything went out, the newest attempt
    is followed (a retried run replaces a failed one); once events of an attempt went out, only
    that attempt's events are accepted, each index once and in order. Events of an older attempt
    are dropped; a newer attempt, or a gap in the indices, raises GenerationLost."""

    def __init__(self, call: ProxyCall) -> None:
        self.call = call
        self.delivered = 0
        self.duplicates = 0
        self.stale = 0  # events of an older attempt, dropped
        self.attempt = -1  # the attempt being followed
        self.resp: web.StreamResponse | None = None
        self.done = False

    @property
    def started(self) -> bool:
        return self.resp is not None

    async def events(
        self,
        seq: int,
        events: list[str],
        status: int,
        content_type: str,
        fin: bool,
        attempt: int = 0,
    ) -> web.StreamResponse | None:
        """Deliver a chunk. Returns the finished response once the answer is complete."""
        if attempt != self.attempt:
            if attempt < self.attempt:
                self.stale += len(events)
                return None
            if self.started:
                raise GenerationLost(
                    f"the run streaming this answer failed after {self.delivered} events"
                )
            self.attempt = attempt  # nothing went out yet: follow the newer run
            self.delivered = 0
        call = self.call
        if not call.stream or (status != 200 and not self.started):
            # a whole body in one chunk (non-streaming, or an error before any event)
            if not fin:
                return None
            self.done = True
            body = "".join(events).encode()
            return web.Response(
                status=status,
                body=body,
                headers={"Content-Type": content_type or "application/json"},
            )
        if seq > self.delivered:
            raise GenerationLost(f"events {self.delivered}..{seq - 1} of the answer were lost")
        if status != 200 and self.started:
            # this attempt failed after it had streamed: end with an SSE error event
            if fin:
                self.done = True
                await self.resp.write(("data: " + "".join(events).strip() + "\n\n").encode())
                await self.resp.write_eof()
                return self.resp
            return None
        if self.resp is None:
            self.resp = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": content_type or "text/event-stream",
                    "Cache-Control": "no-cache",
                },
            )
            await self.resp.prepare(call.request)
        fresh = events[self.delivered - seq :] if seq < self.delivered else events
        self.duplicates += len(events) - len(fresh)
        if fresh:
            self.delivered += len(fresh)
            await self.resp.write("".join(fresh).encode())
        if fin:
            self.done = True
            await self.resp.write_eof()
            return self.resp
        return None

    async def fail(self, err: APIError) -> web.StreamResponse:
        """End the answer with an error (an SSE error event once the stream started)."""
        self.done = True
        if self.resp is None:
            return err.response()
        await self.resp.write(err.sse_event())
        await self.resp.write_eof()
        return self.resp
