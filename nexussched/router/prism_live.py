"""PRISM in the live router: the policy dispatcher plus what a learning, multi-replica policy needs.

`nexussched router --mode prism --policy prism [--mode-arg redis=redis://HOST:PORT]
[--mode-arg replica=NAME] [--mode-arg topic=T]`:
- step telemetry from every backend that serves it (engine-sim's GET /telemetry) goes to the
  policy's observe() (TelemetryFeed), so it learns each engine's speed as in the simulator;
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
from .telemetry_feed import TelemetryFeed

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
    ) -> None:
        super().__init__(policy)
        if redis is not None and not hasattr(policy, "take_deltas"):
            raise ValueError("--mode prism with redis needs --policy prism (state sharing)")
        if share_interval <= 0 or telemetry_interval <= 0:
            raise ValueError("share_interval and telemetry_interval must be positive")
        self.redis_url = redis
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}"
        self.topic = topic
        self.share_interval = share_interval
        self.telemetry_interval = telemetry_interval
        self.feed: TelemetryFeed | None = None
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
        if hasattr(p, "observe"):
            self.feed = TelemetryFeed(
                p.observe, router.backends, router.session, self.telemetry_interval
            )
            self._tasks.append(asyncio.create_task(self.feed.run()))
        if self.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(self.redis_url)
            self.share = PrismShare(
                p,
                self._redis,
                self.replica,
                lambda: [b.name for b in router.backends],
                topic=self.topic,
                interval=self.share_interval,
            )
            self._tasks.append(asyncio.create_task(self.share.run()))

    async def close(self) -> None:
        await super().close()
        if self.share is not None:
            await self.share.close()
        if self._redis is not None:
            await self._redis.aclose()
