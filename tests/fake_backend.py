"""A small OpenAI-style backend (a real aiohttp server on 127.0.0.1) whose answers a test sets:
it counts the completion requests it gets and keeps their headers."""

from __future__ import annotations

import json

from aiohttp import web
from fastdeploy_harness import MODEL, Host
from multidict import CIMultiDict


class FakeBackend:
    def __init__(self, status: int = 200, tokens: int = 3, compress: bool = False) -> None:
        self.status = status  # what /v1/completions answers
        self.tokens = tokens
        self.compress = compress  # gzip/deflate answers when the request accepts them
        self.hits = 0
        self.headers: list[CIMultiDict] = []
        self.host: Host | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        if self.compress:  # a /metrics that compresses when asked (as prometheus_client's does)
            app.router.add_get("/metrics", self._metrics)
        return app  # otherwise no /metrics: the router checks liveness through /health

    async def start(self) -> FakeBackend:
        self.host = await Host(self.app()).start()
        return self

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()

    @property
    def url(self) -> str:
        assert self.host is not None
        return self.host.url

    async def _complete(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        self.headers.append(CIMultiDict(request.headers))
        if self.status != 200:
            body = {"error": {"message": f"fake answers {self.status}", "type": "x", "code": None}}
            return web.json_response(body, status=self.status)
        n = self.tokens
        body = {
            "id": f"cmpl-{self.hits}",
            "object": "text_completion",
            "model": MODEL,
            "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": n + 2},
        }
        resp = web.Response(body=json.dumps(body), content_type="application/json")
        if self.compress:
            resp.enable_compression()  # as the request's Accept-Encoding allows
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        text = "vllm:num_requests_running 3.0\nvllm:num_requests_waiting 1.0\n"
        resp = web.Response(text=text, content_type="text/plain")
        resp.enable_compression()
        return resp

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
