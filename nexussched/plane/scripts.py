"""Lua scripts: every change that must be atomic across queue, load score and lease.

Each script takes the topic's key prefix as ARGV[1] and derives its keys from it; KEYS[1] is the
topic's stats key, which only routes the call to the node holding the topic's slot on a Redis
Cluster (every key a script touches is in that slot, see keys.py). Times come from the Redis server
clock (TIME), so replicas with skewed clocks still agree on lease deadlines. The load score of a
node is always rewritten as the length of its queue (never incremented blindly), so it cannot drift.

Every script terminates on every input: loops run over ARGV (bounded by the call) or pop at most
`MAX_MOVE` entries a call (bounded by the script), never "until a list is empty" on a list the loop
itself may refill.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

MAX_MOVE = 1000  # entries one call may pop or move (CLAIM, ADOPT, REAP): bounded script time

_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

_SYNC_SCORE = """
local function sync_score(P, node, shard)
  local n = redis.call('LLEN', P .. 'q:' .. node)
  redis.call('ZADD', P .. 'load:' .. shard, n, node)
  return n
end
local function ring(P, node)
  local b = P .. 'bell:' .. node
  redis.call('RPUSH', b, 1)
  redis.call('LTRIM', b, -1, -1)
end
"""

# ARGV: prefix, node, shard, rid, payload, origin, lane, ttl_ms, grace_ms, attempt0, origin_ka_ms
# -> queue length after the push, or 0 when the id is already known and still live (duplicate).
# A request that was cancelled, expired or dropped may be queued again by its origin; attempt0 is
# the highest attempt the origin has seen, so the new run's attempt ids are all fresh. Enqueueing
# also renews the origin's keep-alive (its work must not look orphaned right after a Redis restart).
ENQUEUE = (
    _NOW
    + _SYNC_SCORE
    + """
local P = ARGV[1]
local tk = P .. 'task:' .. ARGV[4]
local st = redis.call('HGET', tk, 'st')
if st == 'queued' or st == 'leased' or st == 'done' then return 0 end
local ttl = tonumber(ARGV[8])
local a0 = math.max(tonumber(ARGV[10] or '0') or 0, tonumber(redis.call('HGET', tk, 'a') or '0'))
redis.call('HSET', tk, 'p', ARGV[5], 'o', ARGV[6], 'l', ARGV[7], 'h', ARGV[2], 's', ARGV[3],
           'st', 'queued', 'a', a0, 'w', '', 't', now, 'x', now + ttl)
redis.call('PEXPIRE', tk, ttl + tonumber(ARGV[9]))
local oka = tonumber(ARGV[11] or '0') or 0
if oka > 0 then
  local rk = P .. 'replica:' .. ARGV[6]
  if redis.call('PTTL', rk) < oka then redis.call('SET', rk, '1', 'PX', oka) end
end
redis.call('RPUSH', P .. 'q:' .. ARGV[2], ARGV[4])
local n = sync_score(P, ARGV[2], ARGV[3])
ring(P, ARGV[2])
redis.call('HINCRBY', P .. 'stats', 'enqueued', 1)
return n
"""
)

# ARGV: prefix, me, my_shard, n_own, victim, victim_shard, n_steal, min_score, lease_ms, worker
# Pops up to n_own from the own queue; only if that yields nothing, up to n_steal from the
# victim, provided its score is still >= min_score (or it is dead and has work left).
# Requests whose origin replica is gone (its keep-alive expired: nobody would read the answer) are
# dropped, not run (state 'orphaned'). At most MAX_MOVE entries are popped per call.
# -> flat list of 7-tuples: rid, attempt, payload, origin, lane, home, stolen(0/1)
CLAIM = (
    _NOW
    + _SYNC_SCORE
    + """
local P = ARGV[1]
local lease = tonumber(ARGV[9])
local worker = ARGV[10]
local out = {}
local skipped = 0
local orphaned = 0
local budget = """
    + str(MAX_MOVE)
    + """
local function take(node, shard, n, stolen)
  local q = P .. 'q:' .. node
  local got = 0
  n = math.min(n, budget)
  while got < n and budget > 0 do
    local rid = redis.call('LPOP', q)
    if not rid then break end
    budget = budget - 1
    local tk = P .. 'task:' .. rid
    local f = redis.call('HMGET', tk, 'st', 'x', 'o')
    if f[1] == 'queued' then
      if tonumber(f[2]) <= now then
        redis.call('HSET', tk, 'st', 'expired')
        skipped = skipped + 1
      elseif redis.call('EXISTS', P .. 'replica:' .. f[3]) == 0 then
        redis.call('HSET', tk, 'st', 'orphaned')
        orphaned = orphaned + 1
      else
        local a = redis.call('HINCRBY', tk, 'a', 1)
        redis.call('HSET', tk, 'st', 'leased', 'w', worker)
        redis.call('ZADD', P .. 'leases', now + lease, rid)
        local g = redis.call('HMGET', tk, 'p', 'o', 'l', 'h')
        out[#out + 1] = rid
        out[#out + 1] = a
        out[#out + 1] = g[1]
        out[#out + 1] = g[2]
        out[#out + 1] = g[3]
        out[#out + 1] = g[4]
        out[#out + 1] = stolen
        got = got + 1
      end
    else
      skipped = skipped + 1
    end
  end
  sync_score(P, node, shard)
  return got
end
local own = take(ARGV[2], ARGV[3], tonumber(ARGV[4]), 0)
if own > 0 then redis.call('HINCRBY', P .. 'stats', 'claimed', own) end
if own == 0 and ARGV[5] ~= '' and ARGV[5] ~= ARGV[2] then
  local v, vs = ARGV[5], ARGV[6]
  local lt = P .. 'load:' .. vs
  local score = tonumber(redis.call('ZSCORE', lt, v) or '-1')
  local alive = redis.call('EXISTS', P .. 'node:' .. v)
  if score >= tonumber(ARGV[8]) or (alive == 0 and score > 0) then
    local got = take(v, vs, tonumber(ARGV[7]), 1)
    if got > 0 then
      redis.call('HINCRBY', P .. 'stats', 'claimed', got)
      redis.call('HINCRBY', P .. 'stats', 'stolen', got)
    end
  end
  if alive == 0 and redis.call('LLEN', P .. 'q:' .. v) == 0 then
    redis.call('ZREM', lt, v)
  end
end
if skipped > 0 then redis.call('HINCRBY', P .. 'stats', 'skipped', skipped) end
if orphaned > 0 then redis.call('HINCRBY', P .. 'stats', 'orphaned', orphaned) end
return out
"""
)

# ARGV: prefix, worker, then (rid, attempt) pairs in queue order.
# Gives back claimed requests that did not fit the engine: they return to the head of their
# home queue, in their original order. -> number returned
UNCLAIM = (
    _SYNC_SCORE
    + """
local P = ARGV[1]
local worker = ARGV[2]
local n = 0
local touched = {}
for i = #ARGV - 1, 3, -2 do
  local rid, att = ARGV[i], ARGV[i + 1]
  local tk = P .. 'task:' .. rid
  local f = redis.call('HMGET', tk, 'st', 'a', 'w', 'h', 's')
  if f[1] == 'leased' and f[2] == att and f[3] == worker then
    redis.call('HSET', tk, 'st', 'queued', 'w', '')
    redis.call('ZREM', P .. 'leases', rid)
    redis.call('LPUSH', P .. 'q:' .. f[4], rid)
    touched[f[4]] = f[5]
    n = n + 1
  end
end
for node, shard in pairs(touched) do
  sync_score(P, node, shard)
  ring(P, node)
end
return n
"""
)

# ARGV: prefix, rid, attempt, worker, fin(0/1), lease_ms
# The fence before a worker appends events to the origin's response list: it may, only while it
# still holds this attempt's lease (a worker whose lease expired and was re-queued is refused, so
# two attempts never stream at once; the origin also accepts one attempt only). fin marks the task
# done and drops its lease (idempotent: a retried fin of the same attempt passes again). A task
# whose origin replica is gone is dropped (state 'orphaned'): nobody reads its answer.
# -> {1 ok | 0 fenced | -1 origin gone, origin, lane}
PUSH = (
    _NOW
    + """
local P = ARGV[1]
local rid = ARGV[2]
local tk = P .. 'task:' .. rid
local f = redis.call('HMGET', tk, 'st', 'a', 'w', 'o', 'l')
local mine = f[2] == ARGV[3] and f[3] == ARGV[4]
if f[1] == 'done' and mine and ARGV[5] == '1' then return {1, f[4], f[5]} end
if f[1] ~= 'leased' or not mine then
  redis.call('HINCRBY', P .. 'stats', 'fenced', 1)
  return {0, f[4] or '', f[5] or '0'}
end
if redis.call('EXISTS', P .. 'replica:' .. f[4]) == 0 then
  redis.call('HSET', tk, 'st', 'orphaned')
  redis.call('ZREM', P .. 'leases', rid)
  redis.call('HINCRBY', P .. 'stats', 'orphaned', 1)
  return {-1, f[4], f[5]}
end
if ARGV[5] == '1' then
  redis.call('HSET', tk, 'st', 'done')
  redis.call('ZREM', P .. 'leases', rid)
  redis.call('PEXPIRE', tk, 60000)
  redis.call('HINCRBY', P .. 'stats', 'done', 1)
else
  redis.call('ZADD', P .. 'leases', now + tonumber(ARGV[6]), rid)
end
return {1, f[4], f[5]}
"""
)

# ARGV: prefix, worker, lease_ms, then (rid, attempt) pairs -> rids this worker no longer holds
RENEW = (
    _NOW
    + """
local P = ARGV[1]
local worker = ARGV[2]
local until_ = now + tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV - 1, 2 do
  local rid, att = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', P .. 'task:' .. rid, 'st', 'a', 'w')
  if f[1] == 'leased' and f[2] == att and f[3] == worker then
    redis.call('ZADD', P .. 'leases', until_, rid)
  else
    lost[#lost + 1] = rid
  end
end
return lost
"""
)

# ARGV: prefix, limit, fallback_node, fallback_shard
# Requeues requests whose lease ran out (their worker died or stalled) at the head of their home
# queue, or of the fallback node when the home node is gone. -> number requeued
REAP = (
    _NOW
    + _SYNC_SCORE
    + """
local P = ARGV[1]
local lim = math.max(0, math.min(tonumber(ARGV[2]) or 0, """
    + str(MAX_MOVE)
    + """))
local exp = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, lim)
local moved = 0
local touched = {}
for _, rid in ipairs(exp) do
  redis.call('ZREM', P .. 'leases', rid)
  local tk = P .. 'task:' .. rid
  local f = redis.call('HMGET', tk, 'st', 'h', 's', 'x')
  if f[1] == 'leased' then
    if tonumber(f[4]) <= now then
      redis.call('HSET', tk, 'st', 'expired')
    else
      local home, shard = f[2], f[3]
      if ARGV[3] ~= '' and redis.call('EXISTS', P .. 'node:' .. home) == 0 then
        home, shard = ARGV[3], ARGV[4]
        redis.call('HSET', tk, 'h', home, 's', shard)
      end
      redis.call('HSET', tk, 'st', 'queued', 'w', '')
      redis.call('LPUSH', P .. 'q:' .. home, rid)
      touched[home] = shard
      moved = moved + 1
    end
  end
end
for node, shard in pairs(touched) do
  sync_score(P, node, shard)
  ring(P, node)
end
if moved > 0 then redis.call('HINCRBY', P .. 'stats', 'requeued', moved) end
return moved
"""
)

# ARGV: prefix, rid -> the state the request was in ('' if unknown). Queued or leased requests
# become expired: a queued one leaves its queue, a leased one's worker is fenced out.
CANCEL = (
    _SYNC_SCORE
    + """
local P = ARGV[1]
local rid = ARGV[2]
local tk = P .. 'task:' .. rid
local f = redis.call('HMGET', tk, 'st', 'h', 's')
if not f[1] then return '' end
if f[1] == 'queued' then
  redis.call('LREM', P .. 'q:' .. f[2], 1, rid)
  sync_score(P, f[2], f[3])
end
if f[1] == 'queued' or f[1] == 'leased' then
  redis.call('HSET', tk, 'st', 'expired')
  redis.call('ZREM', P .. 'leases', rid)
  redis.call('HINCRBY', P .. 'stats', 'expired', 1)
end
if f[1] == 'leased' then  -- a worker had it: its engine may have run it (counted apart)
  redis.call('HINCRBY', P .. 'stats', 'expired_leased', 1)
end
return f[1]
"""
)

# ARGV: prefix, dead, dead_shard, me, my_shard
# Moves up to MAX_MOVE entries of the queue of a node whose keep-alive expired to the head of mine
# (order kept); drops the dead node from the load table once its queue is empty. A node never
# adopts itself (that loop would pop and push one list forever): a caller whose own keep-alive is
# gone gets 0 and renews it. -> number adopted (0 if the node is alive after all)
ADOPT = (
    _SYNC_SCORE
    + """
local P = ARGV[1]
local dead, me = ARGV[2], ARGV[4]
if dead == me then return 0 end
if redis.call('EXISTS', P .. 'node:' .. dead) == 1 then return 0 end
local n = 0
while n < """
    + str(MAX_MOVE)
    + """ do
  local rid = redis.call('RPOP', P .. 'q:' .. dead)
  if not rid then break end
  redis.call('LPUSH', P .. 'q:' .. me, rid)
  if redis.call('HEXISTS', P .. 'task:' .. rid, 'h') == 1 then
    redis.call('HSET', P .. 'task:' .. rid, 'h', me, 's', ARGV[5])
  end
  n = n + 1
end
if redis.call('LLEN', P .. 'q:' .. dead) == 0 then
  redis.call('ZREM', P .. 'load:' .. ARGV[3], dead)
else
  sync_score(P, dead, ARGV[3])
end
sync_score(P, me, ARGV[5])
if n > 0 then
  ring(P, me)
  redis.call('HINCRBY', P .. 'stats', 'adopted', n)
end
return n
"""
)

# ARGV: prefix, rid, attempt, worker, new_home, new_shard, new_payload
# Splitwise: the prefill node passes a request it holds (with its KV-transfer parameters in the
# new payload) to the tail of a decode node's queue, in one step. -> 1 ok, 0 lease lost
HANDOFF = (
    _SYNC_SCORE
    + """
local P = ARGV[1]
local rid = ARGV[2]
local tk = P .. 'task:' .. rid
local f = redis.call('HMGET', tk, 'st', 'a', 'w')
if f[1] ~= 'leased' or f[2] ~= ARGV[3] or f[3] ~= ARGV[4] then
  redis.call('HINCRBY', P .. 'stats', 'fenced', 1)
  return 0
end
redis.call('HSET', tk, 'p', ARGV[7], 'h', ARGV[5], 's', ARGV[6], 'st', 'queued', 'w', '')
redis.call('ZREM', P .. 'leases', rid)
redis.call('RPUSH', P .. 'q:' .. ARGV[5], rid)
sync_score(P, ARGV[5], ARGV[6])
ring(P, ARGV[5])
redis.call('HINCRBY', P .. 'stats', 'handoffs', 1)
return 1
"""
)

# ARGV: prefix, node, owner, keepalive_ms -> 1 if `owner` now holds the node (new or renewed)
OWN_NODE = """
local k = ARGV[1] .. 'node:' .. ARGV[2]
local cur = redis.call('GET', k)
if cur == false then
  redis.call('SET', k, ARGV[3], 'PX', tonumber(ARGV[4]))
  return 1
end
if cur == ARGV[3] then
  redis.call('PEXPIRE', k, tonumber(ARGV[4]))
  return 1
end
return 0
"""

# ARGV: prefix, node, owner -> 1 if released
RELEASE_NODE = """
local k = ARGV[1] .. 'node:' .. ARGV[2]
if redis.call('GET', k) == ARGV[3] then
  redis.call('DEL', k)
  return 1
end
return 0
"""


@dataclass
class Scripts:
    """The scripts registered on one client (EVALSHA, reloaded after a Redis restart)."""

    enqueue: AsyncScript
    claim: AsyncScript
    unclaim: AsyncScript
    push: AsyncScript
    renew: AsyncScript
    reap: AsyncScript
    cancel: AsyncScript
    adopt: AsyncScript
    handoff: AsyncScript
    own_node: AsyncScript
    release_node: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        r = client.register_script
        return cls(
            enqueue=r(ENQUEUE),
            claim=r(CLAIM),
            unclaim=r(UNCLAIM),
            push=r(PUSH),
            renew=r(RENEW),
            reap=r(REAP),
            cancel=r(CANCEL),
            adopt=r(ADOPT),
            handoff=r(HANDOFF),
            own_node=r(OWN_NODE),
            release_node=r(RELEASE_NODE),
        )
