"""Several PRISM router replicas sharing engine state and models through Redis.

Every `interval` seconds a replica
- adds the pacing and backlog time it committed to each engine since its last sync to that
  engine's shared clocks, in one atomic script on Redis's own clock: V = max(V, t) + dv and
  U = max(U, t) + du, per engine in the hash ``nxs:{<topic>}:prism_clock``. Each shared clock
  drains at one second per second whatever the number of replicas, as an engine does, and every
  replica takes back where it stands (seconds ahead) into its own prediction (set_shared);
- writes its requests in flight per engine (and their contexts) to ``nxs:{<topic>}:prism:<id>``,
  which expires unless renewed, and reads the other live replicas' counts (a dead replica's share
  vanishes with its key);
- shares learned models through the same key the engines publish theirs to,
  ``nxs:{<topic>}:model:<engine>`` (a model card, plane/streams.py, with the number of steps it
  was learned from): it adopts the card of an engine it has seen far fewer steps of (a replica
  that starts late, or an engine whose stream no longer holds its early steps), and writes its
  own only where it has seen more steps than the card's author (never over a better one).
Key names come from plane/keys.py, shared with the engines' publisher.
Engines are keyed by name, so replicas may list backends in different orders. Between syncs a
replica sees the others' work of up to one interval late; PRISM's random tie-break (`jitter`)
spreads replicas that decide at once instead of letting them herd onto the same engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence

from ..plane.keys import KeySpace
from ..plane.streams import model_card, parse_model_card
from .outage import OutageLog

log = logging.getLogger("nexussched.router")

# KEYS[1]: the clock hash; ARGV: the time ('' = Redis's own clock), n, then n x (engine, dv, du).
# Returns 2n strings: V - t, U - t.
_CLOCK_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local n = tonumber(ARGV[2])
local out = {}
for i = 0, n - 1 do
  local name = ARGV[3 + 3 * i]
  local dv = tonumber(ARGV[4 + 3 * i])
  local du = tonumber(ARGV[5 + 3 * i])
  local v = tonumber(redis.call('HGET', KEYS[1], 'v:' .. name) or '0')
  local u = tonumber(redis.call('HGET', KEYS[1], 'u:' .. name) or '0')
  if v < now then v = now end
  if u < now then u = now end
  v = v + dv
  u = u + du
  redis.call('HSET', KEYS[1], 'v:' .. name, tostring(v), 'u:' .. name, tostring(u))
  out[#out + 1] = tostring(v - now)
  out[#out + 1] = tostring(u - now)
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return out
"""


def clock_key(topic: str) -> str:
    return KeySpace(topic).prism_clock


def share_key(topic: str, replica: str) -> str:
    return KeySpace(topic).prism_share(replica)


def model_key(topic: str, engine: str) -> str:
    return KeySpace(topic).model(engine)


class PrismShare:
    def __init__(
        self,
        policy,
        redis,
        replica: str,
        names: Callable[[], Sequence[str]],
        topic: str = "default",
        interval: float = 0.05,
        ttl: float = 2.0,
        model_every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        shared_time: Callable[[], float] | None = None,
    ) -> None:
        """`redis`: a redis.asyncio client; `names()`: engine names in the policy's index order;
        `clock`: the policy's clock; `shared_time`: the clock the shared clocks run on (default:
        the Redis server's, the same for every replica)."""
        self.policy = policy
        self.redis = redis
        self.replica = replica
        self.names = names
        self.topic = topic
        self.interval = interval
        self.outage = OutageLog("prism state sharing (Redis)", log)
        self.ttl = ttl
        self.model_every = model_every
        self.clock = clock
        self.shared_time = shared_time
        self._last_models = -1e18
        self.syncs = 0
        self.adopted = 0  # models taken from the plane (an engine's, or another replica's)

    async def sync_once(self) -> None:
        now = self.clock()
        names = list(self.names())
        deltas = self.policy.take_deltas()[: len(names)]
        if not names:
            return
        argv: list = ["" if self.shared_time is None else repr(self.shared_time()), len(names)]
        for i, name in enumerate(names):
            dv, du = (deltas[i][0], deltas[i][1]) if i < len(deltas) else (0.0, 0.0)
            argv += [name, repr(float(dv)), repr(float(du))]
        ahead = await self.redis.eval(_CLOCK_LUA, 1, clock_key(self.topic), *argv)
        # this replica's in-flight counts; the others' live ones
        key = share_key(self.topic, self.replica)
        mine = {names[i]: json.dumps([d[2], d[3]]) for i, d in enumerate(deltas) if i < len(names)}
        pipe = self.redis.pipeline()
        if mine:
            pipe.hset(key, mapping=mine)
        pipe.pexpire(key, int(self.ttl * 1000))
        await pipe.execute()
        others = [k async for k in self.redis.scan_iter(match=share_key(self.topic, "*"))]
        others = [k for k in others if (k.decode() if isinstance(k, bytes) else k) != key]
        counts = {n: [0, 0.0] for n in names}
        if others:
            pipe = self.redis.pipeline()
            for k in others:
                pipe.hgetall(k)
            for h in await pipe.execute():
                for raw_name, raw in h.items():
                    name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
                    if name in counts:
                        try:
                            n, ctx = json.loads(raw)
                        except (ValueError, TypeError):
                            continue
                        counts[name][0] += int(n)
                        counts[name][1] += float(ctx)
        for i, name in enumerate(names):
            v, u = float(ahead[2 * i]), float(ahead[2 * i + 1])
            self.policy.set_shared(i, v, u, counts[name][0], counts[name][1], now)
        if now - self._last_models >= self.model_every:
            self._last_models = now
            await self._share_models(names, [d[4] for d in deltas])
        self.syncs += 1

    async def _share_models(self, names: list[str], steps_seen: list[int]) -> None:
        keys = [model_key(self.topic, n) for n in names]
        if not keys:
            return
        published = await self.redis.mget(keys)
        pipe = self.redis.pipeline()
        writes = 0
        for i, (key, raw) in enumerate(zip(keys, published, strict=True)):
            steps = steps_seen[i] if i < len(steps_seen) else 0
            card = parse_model_card(raw)
            their_steps = card.steps if card is not None else 0
            if card is not None and their_steps > 2 * steps + 100:
                self.policy.set_model(i, card.model)
                self.adopted += 1
            elif steps > their_steps and self.policy.model(i).fitted:
                by = f"replica:{self.replica}"
                pipe.set(key, model_card(self.policy.model(i), steps, by))
                writes += 1
        if writes:
            await pipe.execute()

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
                self.outage.ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down: each replica keeps routing on its own view
                self.outage.fail(e)
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        try:
            await self.redis.delete(share_key(self.topic, self.replica))
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
