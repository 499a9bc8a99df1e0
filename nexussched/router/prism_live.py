"""PRISM in the live router: the policy dispatcher plus what a learning, multi-replica policy needs.

`nexussched router --mode prism --policy prism [--mode-arg redis=redis://HOST:PORT]
[--mode-arg replica=NAME] [--mode-arg topic=T]
[--mode-arg learn=auto|telemetry|observed|metrics|none] [--mode-arg learn_budget=N]`:
- step telemetry goes to the policy's observe(), so it learns each engine's speed as in the
  simulator: with `redis`, from the telemetry plane (router/stream_feed.py: the Redis Stream each
  engine running the vLLM plug-in, or engine-sim with --redis-url, publishes to), and from any
  backend that serves GET /telemetry (engine-sim) and publishes no stream (TelemetryFeed);
- `learn` picks the sources: `telemetry` (the above), `observed` (only what the router sees of
  stock engines, router/observed_feed.py: the streams it relays and the engines' vLLM /metrics
  counters), `metrics` (those counters only, as for traffic that is not streamed), `auto`
  (telemetry where an engine gives it, observed for the others; the default), `none` (the prior);
- `learn_budget` (records a second per engine, default 100; 0: all): an engine that steps faster
  is learned from a deterministic sample of its records (router/telemetry_thin.py);
- with `redis`, replicas share engine state and models through Redis (PrismShare) and break
  ties at random (PRISM's `jitter`), so several replicas act as one router without herding;
- a request no engine can serve within its SLO (PRISM with `--policy-arg shed=true`) is answered
  429 with a Retry-After header by the policy dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib

from .policies import TELEMETRY_POLL, make_policy
from .policy_dispatch import PolicyDispatcher
from .prism_share import PrismShare
from .stream_feed import StreamFeed
from .telemetry_feed import TelemetryFeed
from .telemetry_thin import LEARN_BUDGET

LEARN = ("auto", "telemetry", "observed", "metrics", "none")

log = logging.getLogger("nexussched.router")


class PrismDispatcher(PolicyDispatcher):
    def __init__(
        self,
        policy,
        redis: str | None = None,
        replica: str | None = None,
        topic: str = "default",
        share_interval: float = 0.05,
        telemetry_interval: float = TELEMETRY_POLL,
        learn: str = "auto",
        redis_timeout: float = 5.0,
        learn_budget: float = LEARN_BUDGET,
    ) -> None:
        super().__init__(policy)
        if learn not in LEARN:
            raise ValueError(f"--mode-arg learn must be one of {', '.join(LEARN)}, got {learn!r}")
        if redis is not None and not hasattr(policy, "take_deltas"):
            raise ValueError("--mode prism with redis needs --policy prism (state sharing)")
        if share_interval <= 0 or telemetry_interval <= 0 or not redis_timeout > 0:
            raise ValueError(
                "share_interval, telemetry_interval and redis_timeout must be positive"
            )
        self.redis_timeout = float(redis_timeout)
        self.redis_url = redis
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}"
        self.topic = topic
        self.share_interval = share_interval
        self.telemetry_interval = telemetry_interval
        self.learn = learn
        self.learn_budget = float(learn_budget)
        self.feed: TelemetryFeed | None = None
        self.streams: StreamFeed | None = None
        self.observed = None  # ObservedFeed (router/observed_feed.py)
        self.share: PrismShare | None = None
        self._redis = None

    @classmethod
    def from_settings(cls, settings, **kw: object) -> PrismDispatcher:
        args = dict(settings.policy_args)
        if kw.get("redis") is not None and settings.policy == "prism":
            # replicas deciding at once on shared state: spread them (seeded per replica)
            args.setdefault("jitter", 0.02)
            args.setdefault("seed", zlib.crc32(str(kw.get("replica", "")).encode()))
        return cls(make_policy(settings.policy, **args), **kw)  # type: ignore[arg-type]

    async def start(self, router) -> None:
        await super().start(router)
        p = self.policy
        learns = hasattr(p, "observe")
        if learns:
            from ..perfmodel.fit import load_solver

            load_solver()  # not at the first refit, on the event loop, while requests wait
        telemetry = learns and self.learn in ("auto", "telemetry")
        if self.redis_url:
            import redis.asyncio as aioredis

            # every Redis call gives up after redis_timeout: a stalled Redis never stalls routing
            self._redis = aioredis.from_url(
                self.redis_url,
                socket_timeout=self.redis_timeout,
                socket_connect_timeout=self.redis_timeout,
            )
            if telemetry:
                self.streams = StreamFeed(
                    p.observe, router.backends, self._redis, self.topic, self.telemetry_interval
                )
                try:  # map the engines already publishing before the HTTP feed polls any of them
                    await asyncio.wait_for(self.streams.discover(), 5.0)
                except Exception as e:  # noqa: BLE001 - Redis down: the stream task retries
                    log.warning("telemetry plane: first discovery failed: %r", e)
                self._tasks.append(asyncio.create_task(self.streams.run()))
        if telemetry:
            # engine-sim without a stream serves GET /telemetry; a streamed engine is not polled
            streams = self.streams
            self.feed = TelemetryFeed(
                p.observe,
                router.backends,
                router.session,
                self.telemetry_interval,
                skip=streams.covers if streams is not None else None,
                learn_budget=self.learn_budget,
                seen=getattr(p, "seen", None),
            )
            self._tasks.append(asyncio.create_task(self.feed.run()))
            if streams is not None:  # records the HTTP feed taught are not read again
                streams.taught = self.feed.last_step.get
        if (
            learns
            and hasattr(p, "observe_segment")
            and self.learn in ("auto", "observed", "metrics")
        ):
            from .observed_feed import ObservedFeed

            streams = self.learn != "metrics"
            self.observed = ObservedFeed(
                p, len(router.backends), only=self._untaught, streams=streams
            )
            if streams:
                router.watch = self.observed
            router.registry.on_scrape.append(self.observed.scraped)
        if self.redis_url and hasattr(p, "take_deltas"):
            self.share = PrismShare(
                p,
                self._redis,
                self.replica,
                self._engine_names,
                topic=self.topic,
                interval=self.share_interval,
            )
            self._tasks.append(asyncio.create_task(self.share.run()))

    def _engine_names(self) -> list[str]:
        """Each backend's name on the plane (its engine's, once its stream is found)."""
        s = self.streams
        return [
            (s.engine_name(i) if s is not None else None) or b.name
            for i, b in enumerate(self.router.backends)
        ]

    def _untaught(self, idx: int) -> bool:
        """Whether engine `idx` gets no engine telemetry (observed learning is for those only)."""
        if self.learn in ("observed", "metrics"):
            return True
        if self.streams is not None and self.streams.covers(idx):
            return False
        # only once the engine is known to serve no telemetry (its 404), so no step is learned
        # twice while the sources are being found
        return self.feed is None or self.feed.lacks(idx)

    async def close(self) -> None:
        await super().close()
        if self.share is not None:
            await self.share.close()
        if self._redis is not None:
            await self._redis.aclose()
