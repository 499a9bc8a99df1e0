"""The default placement mode: a RoutingPolicy (the same object the simulator runs) picks the
backend; the request is proxied there. PRISM's live dispatcher (prism_live.py) extends it."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence

from aiohttp import web

from .breaker import backoff_delay
from .config import RouterSettings
from .dispatch import BackendFailed, Dispatcher, MaskedView, ProxyCall, RouterCore
from .errors import APIError
from .policies import NoEngineAvailable, RoutingPolicy, make_policy

log = logging.getLogger("nexussched.router")


def _hook(policy: RoutingPolicy, name: str):
    """The policy's `name` hook, or None where it is RoutingPolicy's no-op (not called then: a
    call per request for nothing)."""
    fn = getattr(policy, name)
    if name not in vars(policy) and getattr(type(policy), name) is getattr(RoutingPolicy, name):
        return None
    return fn


def _hooks(policy: RoutingPolicy) -> tuple:
    """(on_first_token, on_output, on_finish, on_end) as _hook gives them; on_end only where the
    policy's class fuses the two (then it is called instead of them: one call per request, not
    two) and neither was replaced on the instance (a wrapper set there is called, as before)."""
    first, output, finish, end = (
        _hook(policy, n) for n in ("on_first_token", "on_output", "on_finish", "on_end")
    )
    if end is not None and ("on_output" in vars(policy) or "on_finish" in vars(policy)):
        end = None
    return first, output, finish, end


def fail_dropped(policy: RoutingPolicy, waiting: dict[object, asyncio.Future]) -> None:
    """Requests the policy gave up on while holding them (a queue's TTL, or one no engine can
    ever take) end now with its reason, rather than wait for a hand-over that never comes."""
    for d in policy.take_dropped():
        fut = waiting.get(d.req_id)
        if fut is None or fut.done():
            continue
        if d.reason == "expired":
            fut.set_exception(APIError(504, f"request expired: {d.message}", code="expired"))
        else:
            fut.set_exception(APIError(400, d.message, code="rejected"))


class PolicyDispatcher(Dispatcher):
    """Default mode: the policy picks a backend; the request is proxied there.

    Supports the whole RoutingPolicy contract: a policy that `holds` returns None from route() and
    hands requests out through pull(idx); one with a `tick_interval` may return Moves, applied to
    requests that have not yet received a byte (the upstream attempt is cancelled and re-sent).
    """

    membership = True  # engines are addressed through the registry: they may join and leave
    relays = True  # every answer is relay()'s or an APIError's (service.Router._handle)

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self._rng = random.Random()  # retry jitter
        self._held: dict[object, asyncio.Future] = {}
        # requests between dispatch and first byte, for policies that re-bind (tick() -> Moves)
        self._flights: dict[object, ProxyCall] = {}
        self._tasks: list[asyncio.Task] = []
        self.kv_feed = None  # KvEventFeed (router/kv_feed.py), for policies that follow KV events
        self._hooks: tuple = ()  # _hooks(policy), set at start

    @classmethod
    def from_settings(cls, settings: RouterSettings, **kwargs: object) -> PolicyDispatcher:
        try:
            return cls(make_policy(settings.policy, **settings.policy_args))
        except TypeError as e:
            raise ValueError(f"bad --policy-arg for {settings.policy!r}: {e}") from None

    async def start(self, router: RouterCore) -> None:
        self.router = router
        p = self.policy
        self._hooks = _hooks(p)
        if p.holds:
            router.registry.on_change.append(lambda i, up: up and self._offer(i))
            self._tasks.append(asyncio.create_task(self._offer_loop(p.tick_interval or 0.05)))
        if p.tick_interval:
            self._tasks.append(asyncio.create_task(self._tick_loop(p.tick_interval)))
        if getattr(p, "follows_kv_events", False):
            # the engines' KV events keep a prefix-aware policy's index exact, as in the simulator
            from .kv_feed import KvEventFeed

            self.kv_feed = KvEventFeed(p.kv_event, router.backends, router.session)
            self._tasks.append(asyncio.create_task(self.kv_feed.run()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    # ---- holding and re-binding ------------------------------------------------------------------
    def _offer(self, idx: int) -> None:
        views = self.router.backends
        now = time.monotonic()
        for info in self.policy.pull(idx, views, now):
            fut = self._held.pop(info.id, None)
            if fut is not None and not fut.done():
                fut.set_result(idx)
            else:  # its client left while it was held: close the policy's books on it
                self.policy.on_finish(info.id, idx, now)
        fail_dropped(self.policy, self._held)

    async def _offer_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self._held:
                for i, b in enumerate(self.router.backends):
                    if b.healthy:
                        self._offer(i)

    async def _tick_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                moves = self.policy.tick(self.router.backends, time.monotonic())
            except Exception as e:  # a policy bug must not stop the router
                log.error("policy tick failed: %r", e)
                continue
            for mv in moves:
                f = self._flights.get(mv.req_id)
                if (
                    f is not None
                    and f.placed == mv.src
                    and f.task is not None
                    and not f.task.done()
                ):
                    f.move_to = mv.dst
                    f.task.cancel()

    async def _choose(self, call: ProxyCall, tried: list[int]) -> int:
        idx = self._route(call, tried)
        return idx if idx is not None else await self._hold(call)

    def _route(self, call: ProxyCall, tried: list[int]) -> int | None:
        """The policy's pick (None: it holds the request; then _hold waits for its engine).
        Not a coroutine: the usual request picks at once."""
        router = self.router
        views: Sequence = router.views_for(call.model)
        if tried:
            views = [
                MaskedView(v._b if isinstance(v, MaskedView) else v, i not in tried and v.healthy)
                for i, v in enumerate(views)
            ]
        now = time.monotonic()
        t = time.perf_counter()
        try:
            idx = self.policy.route(call.info, views, now)
        except NoEngineAvailable as e:
            retry = getattr(e, "retry_after", None)
            if retry is not None:  # admission control (PRISM's shed): 429 with Retry-After
                raise APIError(
                    429,
                    str(e),
                    code="slo_unattainable",
                    headers={"Retry-After": str(max(1, math.ceil(retry)))},
                ) from None
            raise router.no_backend(call.model) from None
        router.metrics.observe_decision(time.perf_counter() - t)
        return idx

    async def _hold(self, call: ProxyCall) -> int:
        """Wait until the policy hands the held request an engine."""
        router = self.router
        router.metrics.held.inc()
        fut = asyncio.get_running_loop().create_future()
        self._held[call.info.id] = fut
        for i, b in enumerate(router.backends):
            if b.healthy:
                self._offer(i)
        try:
            return await fut
        finally:
            self._held.pop(call.info.id, None)

    # ---- retries -----------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        s = self.router.settings
        return backoff_delay(attempt, s.retry_backoff, s.retry_backoff_max, self._rng)

    def _another(self, call: ProxyCall, tried: list[int]) -> bool:
        """Whether a healthy backend serving the call's model is left to try."""
        views = self.router.views_for(call.model)
        return any(v.healthy and i not in tried for i, v in enumerate(views))

    # ---- the request -------------------------------------------------------------------------
    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        router = self.router
        policy = self.policy
        if not self._hooks:  # (not started: a test's dispatcher)
            self._hooks = _hooks(policy)
        first_token, on_output, on_finish, on_end = self._hooks
        rid = call.info.id
        tried: list[int] = []
        spent = 0
        rebinds = policy.tick_interval is not None
        forced: int | None = None
        settings = router.settings
        pause = 0.0
        while True:
            if pause:  # capped exponential backoff with jitter between attempts
                await asyncio.sleep(pause)
                pause = 0.0
            if forced is not None:
                idx, forced = forced, None
            else:
                try:
                    idx = self._route(call, tried)
                    if idx is None:
                        idx = await self._hold(call)
                except APIError as e:
                    raise (router.after_failure(tried[-1]) if tried else e) from None
            b = router.backends[idx]
            b.begin(call.info)
            finished = True
            try:
                try:
                    if rebinds:
                        # A move cancels this very task while it waits for the first byte (no
                        # extra task per request): the tick loop sets move_to, then cancel().
                        call.placed, call.task, call.move_to = idx, asyncio.current_task(), None
                        self._flights[rid] = call
                        try:
                            up = await router.open_upstream(call, idx)
                        except asyncio.CancelledError:
                            cur = call.task
                            if call.move_to is None or cur is None or cur.uncancel() > 0:
                                raise  # not (only) our move: the client went away
                            forced = call.move_to
                            finished = False
                            router.metrics.moves.inc()
                            continue
                        finally:
                            self._flights.pop(rid, None)
                            call.task = None
                    else:
                        up = await router.open_upstream(call, idx)
                except BackendFailed as e:
                    router.backend_failed(e)
                    tried.append(idx)
                    if not e.refused:
                        # the backend may have started on it: only `retries` more tries. A refused
                        # connection did no work, so trying every other backend is safe.
                        spent += 1
                        if spent > router.settings.retries:
                            raise router.after_failure(idx) from None
                    router.metrics.retries.inc()
                    pause = self._backoff(len(tried))
                    continue
                if (
                    up.resp.status >= 500
                    and spent < settings.retries
                    and self._another(call, [*tried, idx])
                ):
                    # the engine answered 5xx and the client has no byte yet: try another one
                    up.resp.close()
                    tried.append(idx)
                    spent += 1
                    router.metrics.retries.inc()
                    pause = self._backoff(len(tried))
                    continue
                # the engine answered: a stream's first bytes, or a whole answer
                if first_token is not None:
                    first_token(rid, idx, time.monotonic())
                return await router.relay(call, up)
            finally:
                b.end(call.info)
                if finished:
                    # the router learns how long the output was only now
                    if on_end is not None:
                        n = call.tokens if call.complete and call.tokens else None
                        on_end(rid, idx, time.monotonic(), n)
                    else:
                        if call.complete and call.tokens and on_output is not None:
                            on_output(rid, call.tokens)
                        if on_finish is not None:
                            on_finish(rid, idx, time.monotonic())
                    if policy.holds and (self._held or policy.held):
                        # room freed here: hand over what waits (nothing held: nothing to do)
                        self._offer(idx)
