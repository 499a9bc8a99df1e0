"""engine-sim: a mock vLLM OpenAI server driven by the engine simulator in real (or scaled) time.

One EngineSim runs behind `/v1/completions` and `/v1/chat/completions` (SSE streaming or not),
`/v1/models`, `/health` and `/metrics` with vLLM's metric names, so a router and its policies see
what they would see in front of vLLM. Steps take their simulated time times `time_scale` of wall
time, on the engine's own clock: a busy engine's next step starts where the last one ended even
when this process woke late (starved of CPU on a loaded machine), as a GPU would not lose that
time, but never before a request it admits had arrived. `time_scale = 0` is fast mode (no pacing:
each burst of work is simulated at once, macro steps included, yielding to the event loop every
few milliseconds), for throughput tests.

Tokens: a prompt string counts ~4 characters per token (deterministic), a list of token ids counts
its length; chat messages add 4 tokens each. Generated text is synthetic words. Without
`ignore_eos`, a request stops early at a geometric length of mean `eos_mean` when that is set
(default 0: it always runs to max_tokens, like `ignore_eos`). A request whose `vllm_xargs` holds
`nexussched_output_tokens` (test-only: trace replay) stops there, or at max_tokens if sooner; the
engine's planner sees only max_tokens until the request ends.

Step telemetry (the StepRecords the perf model learns from; durations in simulated seconds) is
served as JSON lines by `GET /telemetry?since=N` and optionally appended to a file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import warnings

import numpy as np
from aiohttp import web
from prometheus_client import generate_latest

from ..aio import serve_app
from ..engine_sched import make_engine_policy
from ..engine_sched.publish import Publisher
from ..engine_sched.telemetry import PLUGIN_DRIFT_RATIO, PLUGIN_DRIFT_WINDOW, StepSink
from ..perfmodel.model import PerfModel, PerfModelConfig
from ..perfmodel.telemetry import StepRecord
from ..tokens import block_hashes, sequence_pieces
from .engine import EngineConfig, EngineSim
from .hardware import get_profile
from .request import SimRequest
from .server_config import ServerConfig
from .server_feeds import Feed
from .server_metrics import EngineCollector, ServerMetrics
from .server_requests import BadRequest, parse_generation, read_json, slo_hints
from .server_responses import completion_json, output_text, stream_frames
from .server_stream import Gen, write_stream

PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAST_SLICE_S = 0.005  # fast mode: longest stretch of simulation between event-loop turns


_KV_TYPES = {"stored": "BlockStored", "removed": "BlockRemoved"}


def _kv_event_json(ev: tuple[str, list[int]]) -> dict:
    return {"type": _KV_TYPES[ev[0]], "block_hashes": ev[1]}


class EngineServer:
    """One simulated engine and its HTTP face. `app()` builds the aiohttp Application."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg.validate()
        profile = get_profile(cfg.profile)
        self.name = cfg.name or profile.name
        self.engine = EngineSim(
            profile,
            name=self.name,
            seed=cfg.seed,
            config=EngineConfig(
                num_blocks=cfg.num_blocks,
                max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                max_model_len=cfg.max_model_len,
                enable_prefix_caching=cfg.enable_prefix_caching,
            ),
            policy=make_engine_policy(cfg.engine_policy),
            telemetry=self._on_step,
            kv_events=self._on_kv,
        )
        self.scale = cfg.time_scale
        self._ids = itertools.count(1)
        self._rng = np.random.default_rng(cfg.seed)
        self._t0 = time.monotonic()
        self._vt = 0.0  # fast mode's simulated clock
        self._wake = asyncio.Event()
        self._in_step = False
        self._last_end: float | None = None  # end of the last step while busy (engine clock)
        self.lag_recovered = 0.0  # s of late wake-ups the engine's clock did not lose
        self._aborts: list[SimRequest] = []
        self._driver: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._tele: Feed[StepRecord] = Feed(cfg.telemetry_keep)
        # KV events (vLLM's BlockStored / BlockRemoved), served by GET /kv_events
        self._kv: Feed[tuple[str, list[int]]] = Feed(cfg.telemetry_keep)
        self._tele_file = open(cfg.telemetry_out, "a") if cfg.telemetry_out else None  # noqa: SIM115
        self.sink: StepSink | None = None
        if cfg.redis_url:
            # the plug-in's own path: a model learned from this engine's steps, one publisher
            model = PerfModel(
                PerfModelConfig(drift_ratio=PLUGIN_DRIFT_RATIO, drift_window=PLUGIN_DRIFT_WINDOW),
                name=self.name,
            )
            pub = Publisher(cfg.redis_url, cfg.topic, self.name, cfg.addr)
            self.sink = StepSink(model.observe, lambda: model, self._load, None, pub)
        self._created = int(time.time())
        met = ServerMetrics(cfg.models[0], EngineCollector(self))
        self.registry = met.registry
        self._met = met
        self._m_success_by, self._m_e2e = met.success_by, met.e2e
        self._firsts: list[SimRequest] = []
        self.engine.first_tokens = self._firsts  # the step's first tokens, for vLLM's metrics

    # ---- clock and engine loop ---------------------------------------------------------------
    def now(self) -> float:
        """The engine's simulated clock (seconds)."""
        if self.scale > 0:
            return (time.monotonic() - self._t0) / self.scale
        return self._vt

    def _on_kv(self, kind: str, hashes: list[int]) -> None:
        self._kv.append((kind, hashes))

    def _on_step(self, rec: StepRecord) -> None:
        self._met.step(rec, self._firsts, self.scale)
        self._firsts.clear()
        self._tele.append(rec)
        if self.sink is not None:
            self.sink.on_step(rec)
        if self._tele_file is not None:
            self._tele_file.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")

    async def _drive(self) -> None:
        eng = self.engine
        while True:
            if not eng.running and not eng.waiting:
                self._last_end = None  # idle: the next step starts when work comes
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.scale > 0:
                await self._real_step(eng)
            else:
                await self._fast_burst(eng)

    async def _real_step(self, eng: EngineSim) -> None:
        now = self.now()
        start = now
        last = self._last_end
        if last is not None and last >= now:
            start = last  # the timer woke early: a step never starts before the last one ended
        elif last is not None:
            # Busy through a late wake-up (this process starved of CPU on a loaded machine, or
            # busy relaying tokens): the engine's own clock does not lose that time, as a GPU
            # would not. The next step starts where the last ended, or once the newest request
            # it may admit had arrived (never before an arrival: causality).
            newest = max((r.enqueue_time for r in eng.waiting), default=last)
            start = max(last, min(newest, now))
            self.lag_recovered += now - start
        end = eng.start_step(start, start)  # horizon: one step at a time (tokens stream live)
        if end is None:  # nothing fits: wait for a change
            self._last_end = None
            self._wake.clear()
            await self._wake.wait()
            return
        self._in_step = True
        try:
            delay = self._t0 + end * self.scale - time.monotonic()
            await asyncio.sleep(delay if delay > 0 else 0)
        finally:
            done = eng.finish_step()
            self._in_step = False
        self._last_end = end
        self._after_step(done)

    async def _fast_burst(self, eng: EngineSim) -> None:
        t_slice = time.perf_counter()
        while eng.running or eng.waiting:
            end = eng.start_step(self._vt)
            if end is None:
                self._wake.clear()
                await self._wake.wait()
                return
            self._vt = end
            self._after_step(eng.finish_step())
            if time.perf_counter() - t_slice > FAST_SLICE_S:
                await asyncio.sleep(0)
                t_slice = time.perf_counter()
        await asyncio.sleep(0)

    def _after_step(self, done: list[SimRequest]) -> None:
        if self._aborts:
            for r in self._aborts:
                if math.isnan(r.finish):
                    self.engine.abort(r.id)
            self._aborts.clear()
        for r in self.engine.running:
            g = r.tag
            if g.stream and r.generated > g.seen:
                g.wake()
        for r in done:
            g = r.tag
            g.done = True
            g.wake()

    def _abort(self, g: Gen) -> None:
        r = g.req
        if not math.isnan(r.finish):
            return
        self._m_success_by["abort"].inc()
        if self._in_step:
            self._aborts.append(r)  # the pending step holds it: drop it when the step ends
        else:
            self.engine.abort(r.id)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def _startup(self, app: web.Application) -> None:
        self._t0 = time.monotonic()
        self._driver = asyncio.create_task(self._drive())
        if self.sink is not None and self.sink.publisher is not None:
            self.sink.publisher.start()
        if self._tele_file is not None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._tele_file.flush()

    async def _shutdown(self, app: web.Application) -> None:
        for t in (self._driver, self._flusher):
            if t is not None:
                t.cancel()
        if self._tele_file is not None:
            self._tele_file.close()
            self._tele_file = None
        if self.sink is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sink.close)

    def _load(self) -> dict:
        """The load snapshot the plug-in publishes (vLLM's view of its queues)."""
        e = self.engine
        return {
            "num_running": e.num_running,
            "num_waiting": e.num_waiting,
            "kv_usage": float(e.kv_usage),
            "steps": e.steps,
            "t": time.time(),
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/telemetry", self._telemetry)
        app.router.add_get("/kv_events", self._kv_events)
        app.router.add_post("/admin/speed", self._speed)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        with warnings.catch_warnings():  # a plain string key: app["engine_server"] is public
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            app["engine_server"] = self
        return app

    # ---- request handling --------------------------------------------------------------------
    def _admit(self, request: web.Request, body: dict, chat: bool) -> tuple[Gen, str, str]:
        q = parse_generation(body, chat, self.cfg, self.engine.max_model_len, self._rng)
        prompt, mt = q.prompt, q.max_tokens
        if not self.engine.fits(prompt, mt):
            raise BadRequest(
                400, f"prompt of {prompt} tokens does not fit in the KV cache", param="prompt"
            )
        ttft, tpot, prio = slo_hints(request.headers, body, self.cfg.slo_ttft, self.cfg.slo_tpot)
        r = SimRequest(
            next(self._ids), self.now(), prompt, q.output, ttft, tpot, prio, max_tokens=mt
        )
        if self.engine.cache is not None:
            # the full blocks of the prompt and then of the answer it will generate (vLLM caches
            # generated blocks too: the conversation's next turn, which carries this answer,
            # hits on them), named as the router's prefix index names a prompt's blocks
            pieces = sequence_pieces(body, chat, output_text(r.id, q.output))
            r.hashes = block_hashes(pieces, self.engine.block_size)
        g = Gen(r, q.stream)
        r.tag = g
        kvp = body.get("kv_transfer_params")
        if isinstance(kvp, dict) and kvp.get("do_remote_prefill") and prompt > 1:
            # the prompt's KV is pulled from the prefill engine: only the last prompt position
            # is computed here (for the first token), after the transfer
            r.computed = prompt - 1
            delay = (
                prompt * self.engine.profile.model.kv_bytes_per_token / (self.cfg.kv_link_gbs * 1e9)
            )
            if self.scale > 0 and delay > 0:
                asyncio.get_running_loop().call_later(delay * self.scale, self._arrive, r)
                return g, q.model, q.reason
        self.engine.enqueue(r, r.arrival)
        self._wake.set()
        return g, q.model, q.reason

    def _arrive(self, r: SimRequest) -> None:
        """A request whose KV transfer finished joins the engine's queue."""
        self.engine.enqueue(r, self.now())
        self._wake.set()

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = await read_json(request, self.cfg.max_body_bytes)
            g, model, reason = self._admit(request, body, chat)
        except BadRequest as e:
            return e.response()
        r = g.req
        try:
            if g.stream:
                return await self._stream(request, g, model, reason, chat, body, t0)
            while not g.done:
                await g.wait()
        except BaseException:
            self._abort(g)
            raise
        self._finished(g, reason, t0)
        out = completion_json(
            r, g.uid, g.created, model, reason, chat, self.engine.cache is not None
        )
        kvp = body.get("kv_transfer_params")
        if isinstance(kvp, dict) and kvp.get("do_remote_decode"):
            # as vLLM's disaggregated-prefill connectors: where the decode engine finds the KV
            host, port = (request.host.rsplit(":", 1) + ["0"])[:2]
            out["kv_transfer_params"] = {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_engine_id": self.name,
                "remote_host": host,
                "remote_port": int(port),
                "remote_block_ids": list(range(-(-r.prompt // self.engine.block_size))),
            }
        return web.Response(
            body=json.dumps(out, separators=(",", ":")).encode(), content_type="application/json"
        )

    def _finished(self, g: Gen, reason: str, t0: float) -> None:
        now = time.monotonic()
        self._m_success_by[reason].inc()
        self._m_e2e.observe(now - t0)

    async def _stream(
        self,
        request: web.Request,
        g: Gen,
        model: str,
        reason: str,
        chat: bool,
        body: dict,
        t0: float,
    ) -> web.StreamResponse:
        opts = body.get("stream_options")
        usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        head, pre, mid, last = stream_frames(g.uid, g.created, model, reason, chat)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        try:
            await resp.prepare(request)
            await write_stream(resp, g, chat, usage, (head, pre, mid, last))
            self._finished(g, reason, t0)
        except ConnectionResetError:  # the client went away between cancellation checks
            self._abort(g)
        return resp

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": m,
                "object": "model",
                "created": self._created,
                "owned_by": "nexussched",
                "root": m,
                "parent": None,
                "max_model_len": self.engine.max_model_len,  # vLLM's: capped at the KV cache
            }
            for m in self.cfg.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": PROM_CONTENT_TYPE}
        )

    async def _telemetry(self, request: web.Request) -> web.Response:
        """Step records with index >= since (oldest kept first), as JSON lines; headers
        X-Telemetry-Next, X-Telemetry-Total, X-Telemetry-Dropped (Feed.response)."""
        return self._tele.response(request, StepRecord.to_dict, "X-Telemetry")

    async def _kv_events(self, request: web.Request) -> web.Response:
        """KV events with index >= since, as JSON lines {"type": "BlockStored" | "BlockRemoved",
        "block_hashes": [...]} (vLLM's event names; hashes as the router's prefix index names
        prompt blocks). Headers as /telemetry's: X-KV-Next, X-KV-Total, X-KV-Dropped."""
        return self._kv.response(request, _kv_event_json, "X-KV")

    async def _speed(self, request: web.Request) -> web.Response:
        """Slow the engine down (factor > 1) or speed it up: schedulers must notice by learning."""
        try:
            body = await read_json(request, self.cfg.max_body_bytes)
            f = float(body.get("factor"))
            if not (f > 0 and math.isfinite(f)):
                raise ValueError
        except BadRequest as e:
            return e.response()
        except (TypeError, ValueError):
            return BadRequest(400, "factor must be a positive number").response()
        self.engine.set_speed(f)
        return web.json_response({"speed": self.engine.profile.speed})


def run_server(cfg: ServerConfig, host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM; a port in use is a one-line ValueError."""
    if not cfg.name:
        cfg.name = f"{cfg.profile}-{port}"
    if cfg.addr is None:
        cfg.addr = f"{host}:{port}"
    server = EngineServer(cfg)
    banner = f"engine-sim {server.name} ({cfg.profile}, time-scale {cfg.time_scale:g})"
    return serve_app(server.app(), host, port, banner, shutdown_timeout=1.0)
