"""In-process engine-sim servers and router replicas on free ports (one event loop), and an SSE
client that counts what it receives, for the FastDeploy live-mode tests."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from nexussched.aio import MakeSite
from nexussched.localproc import free_port
from nexussched.router.compose import create_app, router_site
from nexussched.router.config import BackendSpec, RouterSettings
from nexussched.router.modes import SchedulerParams
from nexussched.sim.server import EngineServer, ServerConfig

MODEL = "sim-llama-3-8b"


class Host:
    """An aiohttp app served on 127.0.0.1:<free port>."""

    def __init__(self, app: web.Application, site: MakeSite | None = None) -> None:
        self.app = app
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.make_site = site  # the site the command line would use (the router's raw server)
        self.site: web.BaseSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Host:
        self.runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self.runner.setup()
        if self.make_site is not None:
            self.site = self.make_site(self.runner, "127.0.0.1", self.port, False)
        else:
            self.site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await self.site.start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def engine(**kw) -> Host:
    cfg = ServerConfig(**{"time_scale": 1.0, **kw})
    return await Host(EngineServer(cfg).app()).start()


async def router(backends: list[str], sched: SchedulerParams | None, **kw) -> Host:
    specs = [BackendSpec(url=u, name=f"e{u.rsplit(':', 1)[1]}") for u in backends]
    s = RouterSettings(
        backends=specs,
        mode=sched.name if sched else "policy",
        mode_args={"params": sched} if sched else {},
        health_interval=0.1,
        scrape_interval=0.05,
        **kw,
    )
    h = Host(create_app(s), site=router_site)
    # the router binds its port before its dispatcher starts; give it its own address
    s.port = h.port
    return await h.start()


def dispatcher(h: Host):
    return h.app["router"].dispatcher


async def wait_until(pred, timeout: float = 10.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return True
        await asyncio.sleep(every)
    return False


@dataclass
class Result:
    status: int
    tokens: list[str] = field(default_factory=list)  # streamed token texts, in order
    done: bool = False  # saw [DONE]
    body: dict | None = None
    error: str | None = None
    ids: list[str] = field(default_factory=list)  # response ids seen, in order of first sight

    @property
    def spliced(self) -> bool:
        """Tokens of more than one generation in one answer (the response id changed)."""
        return len(self.ids) > 1


async def complete(
    session: aiohttp.ClientSession,
    url: str,
    max_tokens: int,
    stream: bool = True,
    prompt: str = "hello world " * 20,
    timeout: float = 60.0,
    headers: dict | None = None,
) -> Result:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": True,
    }
    try:
        async with session.post(
            url + "/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=headers,
        ) as r:
            if r.status != 200 or not stream:
                data = await r.json(content_type=None)
                res = Result(r.status, body=data)
                if r.status == 200:
                    res.tokens = [data["choices"][0]["text"]]
                    res.done = True
                return res
            res = Result(200)
            buf = ""
            async for chunk in r.content.iter_any():
                buf += chunk.decode()
                while "\n\n" in buf:
                    ev, buf = buf.split("\n\n", 1)
                    data = ev.removeprefix("data: ").strip()
                    if data == "[DONE]":
                        res.done = True
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        res.error = obj["error"]["message"]
                        continue
                    if obj.get("id") not in res.ids:
                        res.ids.append(obj.get("id"))
                    res.tokens.append(obj["choices"][0]["text"])
            return res
    except (TimeoutError, aiohttp.ClientError) as e:
        return Result(0, error=f"{type(e).__name__}: {e}")


async def engine_finished(session: aiohttp.ClientSession, url: str) -> int:
    """Requests an engine-sim has finished or aborted (vLLM's request_success counter)."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:request_success_total{")
        )
    )


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as r:
        return await r.json(content_type=None)


@dataclass
class Tally:
    """What a fault run did to its clients. served: complete, one generation; failed: a clear
    error (an error body, or an SSE error event); hung: the client gave up waiting; lost: neither
    served nor told (a stream cut without an error, a short answer); duplicated: more tokens than
    asked; spliced: tokens of two generations (response ids) in one answer."""

    served: int = 0
    failed: int = 0
    hung: int = 0
    lost: int = 0
    duplicated: int = 0
    spliced: int = 0
    status_5xx: int = 0

    @classmethod
    def of(cls, results: list[Result], want: int) -> Tally:
        t = cls()
        for r in results:
            if r.status == 0 and r.error and r.error.startswith("TimeoutError"):
                t.hung += 1
            elif r.status == 200 and r.done and r.error is None and len(r.tokens) == want:
                t.served += 1
            elif r.error is not None and r.status != 0:
                t.failed += 1
            elif r.status != 200 and r.body and "error" in r.body:
                t.failed += 1
            else:
                t.lost += 1
            t.duplicated += len(r.tokens) > want
            t.spliced += r.spliced
            t.status_5xx += r.status >= 500
        return t

    @property
    def bad(self) -> tuple[int, int, int, int]:
        """(hung, lost, duplicated, spliced): all zero in a run that holds up."""
        return (self.hung, self.lost, self.duplicated, self.spliced)

    def line(self, name: str) -> str:
        return (
            f"REPRO {name}: served={self.served} failed={self.failed} hung={self.hung} "
            f"lost={self.lost} duplicated={self.duplicated} spliced={self.spliced} "
            f"5xx={self.status_5xx}"
        )
