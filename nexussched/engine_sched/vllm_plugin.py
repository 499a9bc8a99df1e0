"""LENS inside vLLM V1: a scheduler subclass that plans every step and records step telemetry.

Load it with vLLM's `--scheduler-cls` (this package on PYTHONPATH):

    python -m vllm.entrypoints.openai.api_server --model DIR \\
        --scheduler-cls nexussched.engine_sched.vllm_plugin.LensAsyncScheduler

Two forms, each for vLLM's default AsyncScheduler and (with `--no-async-scheduling`) its
synchronous `vllm.v1.core.sched.scheduler.Scheduler`:
- `LensAsyncScheduler` / `LensScheduler`: LENS plans every step (below) and telemetry is published;
- `TelemetryAsyncScheduler` / `TelemetryScheduler`: vLLM keeps its own batching; the plug-in only
  records each step and publishes it, for users who want PRISM's routing without changing how their
  engines batch.
With NEXUS_REDIS_URL set, both publish every step record and a load snapshot to the engine's Redis
Stream and its fitted model to the plane (engine_sched/publish.py, one background thread), which
every router replica reads (router/stream_feed.py). The load snapshot carries the prefix cache's
counts at admission (`prefix_queries`, `prefix_hits`: prompt tokens looked up and found cached, as
vLLM's prefix_cache_*_total count them) and goes out at once when the engine goes idle; a step
that admitted cached requests records `prefix_hit` (vLLM's) and `prefix_seen` (what the plan had
credited them with, from the same lookup) in the JSONL telemetry. Only this module imports vLLM; nothing else in
nexussched imports it.

Each step, before vLLM's own `schedule()` runs, the plug-in builds a StepState from the running
and waiting requests, asks LENS for a StepPlan and applies it through vLLM's own knobs: the step's
token budget (`max_num_scheduled_tokens`), running decodes ahead of partial prefills, running
prefills the plan leaves out held back for the step, and the waiting queue in the plan's order
(FCFS queue only; with `--scheduling-policy priority` the waiting order is vLLM's). vLLM then does the block allocation, preemption and bookkeeping as always, so
the plan's chunks come out of vLLM's greedy fill of that budget in that order. After `schedule()`
the batch composition is read from `SchedulerOutput`; the step's time is measured from then to
`update_from_output()` (see telemetry.StepClock for the async case) and fed to LENS's perf model.

Configuration (environment, read once at start):
  NEXUS_ENGINE_NAME        engine name in telemetry and on the plane (default host:pid); a router
                           maps it to the backend of that name, or of NEXUS_ENGINE_ADDR
  NEXUS_ENGINE_ADDR        host:port this server answers on (how a router finds its backend)
  NEXUS_SLO_TTFT, NEXUS_SLO_TPOT   default SLOs in seconds (2.0, 0.1)
  NEXUS_LENS               1: plan with LENS (default); 0: vLLM's own batching, telemetry only
                           (the Telemetry* classes force 0)
  NEXUS_TELEMETRY          append step records (JSONL) to this file
  NEXUS_PERF_MODEL         start from this saved perf model (JSON) instead of the prior
  NEXUS_LENS_CONFIG        JSON object of LensConfig fields, e.g. {"bank_spend": 0}
  NEXUS_REDIS_URL          publish the model and load there (e.g. redis://127.0.0.1:6379/0)
  NEXUS_TOPIC              plane topic (default "default"); NEXUS_PUBLISH_S period of model
                           cards and load snapshots (1.0 s; step records go out every 0.1 s)
Per request, `vllm_xargs` in the request body (vLLM's extra-args field, which reaches
`SamplingParams.extra_args`) may carry `slo_ttft`, `slo_tpot` and `priority`; a router that accepts
them as top-level extra body fields forwards them there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from ..perfmodel import PerfModel, PerfModelConfig, StepRecord
from .lens import LensConfig
from .plan import SeqState, StepPlan, StepState
from .policies import LensPolicy
from .publish import Publisher
from .telemetry import PLUGIN_DRIFT_RATIO, PLUGIN_DRIFT_WINDOW, StepClock, StepSink

log = logging.getLogger(__name__)


@dataclass
class PluginConfig:
    engine: str
    addr: str | None = None
    slo_ttft: float = 2.0
    slo_tpot: float = 0.1
    plan: bool = True
    telemetry_path: str | None = None
    perf_model: str | None = None
    redis_url: str | None = None
    topic: str = "default"
    publish_every: float = 1.0
    lens: LensConfig = field(default_factory=LensConfig)

    @classmethod
    def from_env(cls, env: dict | None = None) -> PluginConfig:
        e = os.environ if env is None else env

        def num(name: str, default: float) -> float:
            raw = e.get(name)
            if raw in (None, ""):
                return default
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if not v > 0:
                raise ValueError(f"{name}={raw!r} must be positive")
            return v

        return cls(
            engine=e.get("NEXUS_ENGINE_NAME") or f"{socket.gethostname()}:{os.getpid()}",
            addr=e.get("NEXUS_ENGINE_ADDR") or None,
            slo_ttft=num("NEXUS_SLO_TTFT", 2.0),
            slo_tpot=num("NEXUS_SLO_TPOT", 0.1),
            plan=e.get("NEXUS_LENS", "1").strip().lower() not in ("0", "false", "no", "off"),
            telemetry_path=e.get("NEXUS_TELEMETRY") or None,
            perf_model=e.get("NEXUS_PERF_MODEL") or None,
            redis_url=e.get("NEXUS_REDIS_URL") or None,
            topic=e.get("NEXUS_TOPIC") or "default",
            publish_every=num("NEXUS_PUBLISH_S", 1.0),
            lens=lens_config_from_json(e.get("NEXUS_LENS_CONFIG") or "{}"),
        )


def lens_config_from_json(text: str) -> LensConfig:
    """LensConfig from a JSON object of its fields; a bad value is a one-line ValueError."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"NEXUS_LENS_CONFIG is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError("NEXUS_LENS_CONFIG must be a JSON object")
    known = {f.name for f in fields(LensConfig)}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"NEXUS_LENS_CONFIG: unknown fields {bad}; known: {sorted(known)}")
    return LensConfig(**d)


def _xarg(req, key: str, default: float) -> float:
    sp = req.sampling_params
    extra = sp.extra_args if sp is not None and sp.extra_args else None
    if not extra or key not in extra:
        return default
    try:
        v = float(extra[key])
    except (TypeError, ValueError):
        return default
    return v if v > 0 or key == "priority" else default


class _LensMixin:
    """The plug-in's behaviour; mixed into vLLM's Scheduler and AsyncScheduler."""

    def _lens_setup(self, plan: bool | None = None) -> None:
        cfg = PluginConfig.from_env()
        if plan is not None:
            cfg.plan = plan
        self.lens_cfg = cfg
        if cfg.perf_model:
            model = PerfModel.load(cfg.perf_model)
        else:
            model = PerfModel(
                PerfModelConfig(drift_ratio=PLUGIN_DRIFT_RATIO, drift_window=PLUGIN_DRIFT_WINDOW),
                name=cfg.engine,
            )
        self.lens = LensPolicy(engine_name=cfg.engine, config=cfg.lens, model=model)
        self.lens_clock = StepClock()
        self.lens_first_token: dict[str, float] = {}
        self.lens_stats = {"steps": 0, "planned": 0, "followed": 0, "plan_us_max": 0.0}
        # prefix cache at admission, as vLLM's prefix_cache_{queries,hits}_total count it (new
        # requests, not preempted ones): prompt tokens looked up and tokens found cached
        self.lens_prefix = {"queries": 0, "hits": 0}
        self._lens_budget = self.max_num_scheduled_tokens
        out = None
        if cfg.telemetry_path:
            Path(cfg.telemetry_path).parent.mkdir(parents=True, exist_ok=True)
            out = open(cfg.telemetry_path, "a", buffering=1)  # noqa: SIM115
        pub = (
            Publisher(cfg.redis_url, cfg.topic, cfg.engine, cfg.addr, every=cfg.publish_every)
            if cfg.redis_url
            else None
        )
        self.lens_sink = StepSink(
            self.lens.observe, lambda: self.lens.model, self._lens_load, out, pub
        )
        if pub is not None:
            pub.start()
        log.info(
            "nexussched LENS plug-in: engine=%s plan=%s budget=%d telemetry=%s redis=%s",
            cfg.engine,
            cfg.plan,
            self._lens_budget,
            cfg.telemetry_path,
            cfg.redis_url,
        )

    # ---- the planner's view of vLLM's queues ---------------------------------------------------
    def _lens_cached(self, req) -> int:
        """Tokens of a waiting request (nothing computed yet) its prefix cache holds now: vLLM
        looks them up only when it admits the request, so LENS asks the same side-effect-free
        lookup (the coordinator's, which get_computed_blocks wraps) and costs only the tail
        vLLM will compute. 0 where caching is off or this vLLM lacks the lookup."""
        kvm = self.kv_cache_manager
        if req.num_computed_tokens or not getattr(kvm, "enable_caching", False):
            return 0
        if getattr(req, "skip_reading_prefix_cache", False):
            return 0
        try:
            hit = kvm.coordinator.find_longest_cache_hit(req.block_hashes, req.num_tokens - 1)
            return int(hit[1])
        except (AttributeError, TypeError, IndexError):
            return 0

    def _lens_seq(self, req, running: bool) -> SeqState:
        cfg = self.lens_cfg
        return SeqState(
            req.request_id,
            req.num_prompt_tokens,
            req.num_computed_tokens or (0 if running else self._lens_cached(req)),
            # Output placeholders are tokens of steps in flight (async scheduling): count them so
            # that `need` is what vLLM will schedule.
            req.num_output_tokens + req.num_output_placeholders,
            req.max_tokens,
            req.arrival_time,
            running,
            _xarg(req, "slo_ttft", cfg.slo_ttft),
            _xarg(req, "slo_tpot", cfg.slo_tpot),
            int(_xarg(req, "priority", float(req.priority))),
            self.lens_first_token.get(req.request_id),
        )

    def _lens_state(self, now: float) -> StepState:
        decodes: list[SeqState] = []
        prefills: list[SeqState] = []
        for r in self.running:
            s = self._lens_seq(r, True)
            if s.generated > 0 and s.prompt_tokens + s.generated - s.computed == 1:
                decodes.append(s)
            else:
                prefills.append(s)
        for q in (self.kv_holding_waiting, self.waiting):
            for r in q:
                prefills.append(self._lens_seq(r, False))
        pool = self.kv_cache_manager.block_pool
        return StepState(
            now=now,
            decodes=decodes,
            prefills=prefills,
            free_blocks=pool.get_num_free_blocks(),
            total_blocks=pool.num_gpu_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_running_reqs,
            max_num_batched_tokens=self._lens_budget,
            num_running=len(self.running),
        )

    def _lens_apply(self, plan: StepPlan, state: StepState) -> list:
        """Set vLLM's knobs to the plan; returns the running prefills held out of this step."""
        self.max_num_scheduled_tokens = max(1, min(plan.token_budget, self._lens_budget))
        order = plan.order or []
        rank = {rid: i for i, rid in enumerate(order)}
        last = len(rank)
        decode_ids = {s.id for s in state.decodes}
        # vLLM serves `running` in list order before any waiting request: decodes first, then the
        # planned partial prefills in plan order; running prefills the plan left out this step
        # (deprioritised, or no room) sit the step out, as if vLLM's budget had run out for them.
        held = [
            r for r in self.running if r.request_id not in decode_ids and r.request_id not in rank
        ]
        if held:
            out = {id(r) for r in held}
            self.running[:] = [r for r in self.running if id(r) not in out]
        self.running.sort(
            key=lambda r: -1 if r.request_id in decode_ids else rank.get(r.request_id, last)
        )
        if rank and isinstance(self.waiting, deque):  # FCFSRequestQueue is a deque
            items = sorted(self.waiting, key=lambda r: rank.get(r.request_id, last))
            self.waiting.clear()
            self.waiting.extend(items)
        return held

    # ---- vLLM's scheduler interface -------------------------------------------------------------
    def schedule(self, *args, **kwargs):
        plan = None
        plan_us = 0.0
        held: list = []
        seen: dict[str, int] = {}  # waiting request -> cached tokens the plan credited it with
        if self.lens_cfg.plan and (self.running or self.waiting or self.kv_holding_waiting):
            t0 = time.perf_counter()
            state = self._lens_state(time.time())
            seen = {p.id: p.computed for p in state.prefills if not p.running and p.computed}
            plan = self.lens.plan(state)
            if plan.order or state.decodes:
                held = self._lens_apply(plan, state)
            else:
                # the plan leaves nothing runnable (e.g. partial prefills hold every KV block and
                # none can take a chunk): vLLM's own schedule, which preempts, as the simulator
                plan = None
            plan_us = (time.perf_counter() - t0) * 1e6
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = self._lens_budget
            if held:
                self.running.extend(held)
        if out.total_num_scheduled_tokens > 0:
            rec = self._lens_record(out)
            extra: dict = {
                "planned": plan is not None,
                "plan_us": round(plan_us, 1),
                "budget": plan.token_budget if plan is not None else self._lens_budget,
                "followed": plan is not None and _followed(plan, out),
            }
            if out.scheduled_new_reqs:
                hits, queries, credited = self._lens_admitted(out, seen)
                if hits or credited:
                    # vLLM's prefix-cache hit for the requests it admitted this step, and what
                    # the plan had credited them with (its own lookup before vLLM's)
                    extra["prefix_hit"] = hits
                    extra["prefix_seen"] = credited
            if plan is not None and not extra["followed"]:
                # What was planned and what vLLM scheduled instead, for diagnosis.
                got = out.num_scheduled_tokens
                extra["deviation"] = {
                    str(k): [plan.chunk_cap.get(k, 0), got.get(k, 0)]
                    for k in set(plan.chunk_cap) | {k for k, n in got.items() if n > 1}
                    if plan.chunk_cap.get(k, 0) != got.get(k, 0)
                }
            self.lens_clock.scheduled(out, time.monotonic(), rec, **extra)
        return out

    def _lens_admitted(self, out, seen: dict[str, int]) -> tuple[int, int, int]:
        """(cached tokens, prompt tokens, tokens the plan credited as cached) of the requests vLLM
        admitted this step; preempted ones coming back are not counted, as in vLLM's stats."""
        hits = queries = credited = 0
        for nr in out.scheduled_new_reqs:
            r = self.requests.get(nr.req_id)
            if r is not None and r.num_preemptions > 0:
                continue
            hits += nr.num_computed_tokens
            queries += len(nr.prompt_token_ids or ())
            credited += seen.get(nr.req_id, 0)
        px = self.lens_prefix
        px["queries"] += queries
        px["hits"] += hits
        return hits, queries, credited

    def update_from_output(self, scheduler_output, model_runner_output):
        done = None
        if scheduler_output.total_num_scheduled_tokens > 0:
            done = self.lens_clock.complete(scheduler_output, time.monotonic())
        stepped = [
            r
            for r in map(self.requests.get, scheduler_output.num_scheduled_tokens)
            if r is not None
        ]
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        now = time.time()
        first = self.lens_first_token
        reqs = self.requests
        for r in stepped:
            rid = r.request_id
            if rid not in reqs:
                # it ended this step: the planner learns its output length (it knew max_tokens)
                self.lens.finished(rid, r.num_output_tokens, r.max_tokens)
            elif rid not in first and r.num_output_tokens > 0:
                first[rid] = now
        if done is not None:
            self._lens_observe(done.record, done.extra)
        if len(first) > 4 * (len(self.requests) + 64):
            for rid in [k for k in first if k not in self.requests]:
                del first[rid]
        return outputs

    def shutdown(self) -> None:
        self.lens_sink.close()
        super().shutdown()

    # ---- telemetry ------------------------------------------------------------------------------
    def _lens_record(self, out) -> StepRecord:
        chunks: list[tuple[int, int]] = []
        nd = 0
        ctx = 0
        for rid, n in out.num_scheduled_tokens.items():
            r = self.requests.get(rid)
            if r is None:
                continue
            before = r.num_computed_tokens - n  # schedule() has already advanced it
            if n == 1 and before >= r.num_prompt_tokens:
                nd += 1
                ctx += before
            else:
                chunks.append((n, before))
        pool = self.kv_cache_manager.block_pool
        return StepRecord(
            duration=0.0,
            prefill_chunks=tuple(chunks),
            num_decodes=nd,
            decode_ctx_sum=ctx,
            kv_blocks_used=pool.num_gpu_blocks - pool.get_num_free_blocks(),
            num_waiting=len(self.waiting),
            t=time.time(),
            step=self.lens_stats["steps"],
            engine=self.lens_cfg.engine,
        )

    def _lens_observe(self, rec: StepRecord, extra: dict) -> None:
        st = self.lens_stats
        st["steps"] += 1
        st["planned"] += bool(extra.get("planned"))
        st["followed"] += bool(extra.get("followed"))
        st["plan_us_max"] = max(st["plan_us_max"], float(extra.get("plan_us", 0.0)))
        idle = not (self.running or self.waiting or self.kv_holding_waiting)
        self.lens_sink.on_step(rec, extra, idle)

    def _lens_load(self) -> dict:
        queued = 0
        dctx = 0
        for r in self.running:
            need = r.num_tokens + r.num_output_placeholders - r.num_computed_tokens
            if need > 1:
                queued += need
            else:
                dctx += r.num_computed_tokens
        for r in self.waiting:
            queued += r.num_tokens - r.num_computed_tokens
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting) + len(self.kv_holding_waiting),
            "kv_usage": float(self.kv_cache_manager.usage),
            "queued_prefill_tokens": queued,
            "decode_ctx_sum": dctx,
            "steps": self.lens_stats["steps"],
            "prefix_queries": self.lens_prefix["queries"],
            "prefix_hits": self.lens_prefix["hits"],
            "t": time.time(),
        }


def _followed(plan: StepPlan, out) -> bool:
    """Whether vLLM scheduled exactly the planned prefill chunks (decodes are not planned)."""
    got = out.num_scheduled_tokens
    for rid, n in plan.chunk_cap.items():
        if got.get(rid, 0) != n:
            return False
    return True


class LensScheduler(_LensMixin, Scheduler):
    """vLLM's synchronous Scheduler driven by LENS (use with --no-async-scheduling)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lens_setup()


class LensAsyncScheduler(_LensMixin, AsyncScheduler):
    """vLLM's default AsyncScheduler driven by LENS."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lens_setup()


class TelemetryScheduler(_LensMixin, Scheduler):
    """vLLM's synchronous Scheduler with its own batching; records and publishes step telemetry."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lens_setup(plan=False)


class TelemetryAsyncScheduler(_LensMixin, AsyncScheduler):
    """vLLM's default AsyncScheduler with its own batching; records and publishes step telemetry."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lens_setup(plan=False)
