"""The Redis key layout of the state plane, one namespace per topic.

Scheduling state starts with ``nxs:{<topic>}:``. The braces are a Redis Cluster hash tag, so those
keys hash to one slot and the Lua scripts that change them together stay legal on a cluster; nodes
of different topics never see each other's keys (FastDeploy's `scheduler_topic`). Response lists,
the bulk of the traffic (every streamed event), carry their own tag per replica and lane
(``nxs:{<topic>/<replica>/<lane>}:resp``), so on a Redis Cluster they spread over slots and masters.

Which scripts must stay single-slot, and why (scripts.py):
- ENQUEUE, CLAIM, UNCLAIM, CANCEL, REAP, ADOPT, HANDOFF change a task, a queue, the load table and
  the lease set in one step; that atomicity is what keeps "a request is in exactly one place" and
  "a node's score is its queue length" true, so they share the topic's slot.
- PUSH is the fence (task + lease + origin keep-alive, topic slot); the events themselves go to the
  response list in a separate call, outside the script, which is what lets that list live in
  another slot. A late event of a fenced attempt can therefore still reach the origin; the origin
  accepts one attempt's events only (records.Chunk.attempt), so this costs nothing.
- RENEW, OWN_NODE, RELEASE_NODE touch only topic keys.

| key                       | type   | holds                                                          |
|---------------------------|--------|----------------------------------------------------------------|
| ``node:<node>``           | string | keep-alive of a node (an engine and the puller that feeds it); |
|                           |        | value = id of the router replica driving it; expires unless    |
|                           |        | renewed (PX = keep-alive period)                               |
| ``nodes``                 | hash   | node -> JSON NodeInfo (role, shard, url, owner, load, ts): the |
|                           |        | registry every replica reads; stale entries are pruned         |
| ``replica:<id>``          | string | keep-alive of a router replica (response-list owner); a        |
|                           |        | request whose origin has none is dropped, not run              |
| ``replicas``              | hash   | replica -> JSON {t: last heartbeat ms, lanes}: who may own     |
|                           |        | response lists (read instead of a SCAN; swept when dead)       |
| ``load:<shard>``          | zset   | node -> number of requests queued on it (FastDeploy's load     |
|                           |        | score); a node's shard is crc16(node) % load_shards_num        |
| ``q:<node>``              | list   | request ids queued on a node, head = oldest                    |
| ``task:<rid>``            | hash   | payload, origin replica, home node + shard, state (queued/     |
|                           |        | leased/done/expired/orphaned), attempt (fencing token), worker,|
|                           |        | enqueue time; expires ttl + grace after enqueue                |
| ``leases``                | zset   | rid -> lease deadline (ms, Redis clock) of a claimed request   |
| ``{t/<replica>/<i>}:resp``| list   | response chunks (JSON) for requests that replica received;     |
|                           |        | i = crc16(rid) % reader lanes; expires unless written to; own  |
|                           |        | hash tag (another slot than the topic's)                       |
| ``bell:<node>``           | list   | wake-up hint for a node's puller (at most one element)         |
| ``stats``                 | hash   | counters: enqueued, claimed, stolen, requeued, done, expired,  |
|                           |        | skipped (expired in a queue), fenced (refused pushes of a lost |
|                           |        | lease), adopted, handoffs (splitwise prefill -> decode)        |

The telemetry plane (engines -> every router replica; written by engine_sched/publish.py for the
vLLM plug-in and engine-sim alike, read by router/stream_feed.py and router/prism_share.py):

| key                       | type   | holds                                                          |
|---------------------------|--------|----------------------------------------------------------------|
| ``steps:<engine>``        | stream | one entry per step record (``k=s``) or load snapshot (``k=l``), |
|                           |        | ``d`` = JSON; capped by XADD MAXLEN ~ (plane/streams.py)       |
| ``engines``               | hash   | engine -> JSON {addr, t}: which engines publish, and at which  |
|                           |        | host:port they serve (how a router maps a stream to a backend) |
| ``model:<engine>``        | string | JSON model card {steps, by, t, model}: the engine's fitted     |
|                           |        | PerfModel, by the engine or by a replica that saw more steps   |
| ``engine_load:<engine>``  | string | JSON load snapshot (num_running, num_waiting, kv_usage, ...);  |
|                           |        | expires unless renewed                                         |
| ``prism_clock``           | hash   | PRISM replicas' shared pacing/backlog clocks per engine        |
| ``prism:<replica>``       | hash   | one PRISM replica's requests in flight per engine (expires)    |

Queue, load score and lease always change together inside one Lua script, so a node's score equals
the length of its queue and a request is at every moment in exactly one place: a queue, a lease,
or finished.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

STATES = ("queued", "leased", "done", "expired", "orphaned")


def crc16(text: str) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the checksum Redis Cluster slots use."""
    return binascii.crc_hqx(text.encode("utf-8"), 0xFFFF)


def shard_of(node: str, shards: int) -> int:
    return crc16(node) % max(1, shards)


@dataclass(frozen=True)
class KeySpace:
    """Key names for one topic."""

    topic: str = "default"

    @property
    def prefix(self) -> str:
        return f"nxs:{{{self.topic}}}:"

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def replica(self, rid: str) -> str:
        return f"{self.prefix}replica:{rid}"

    def load(self, shard: int) -> str:
        return f"{self.prefix}load:{shard}"

    def queue(self, node: str) -> str:
        return f"{self.prefix}q:{node}"

    def task(self, rid: str) -> str:
        return f"{self.prefix}task:{rid}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}leases"

    def resp(self, replica: str, lane: int = 0) -> str:
        # its own hash tag: response lists spread over a cluster's slots (see the module doc)
        return f"nxs:{{{self.topic}/{replica}/{lane}}}:resp"

    @property
    def replicas(self) -> str:
        return f"{self.prefix}replicas"

    def bell(self, node: str) -> str:
        return f"{self.prefix}bell:{node}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    # ---- the telemetry plane (engines publish; router replicas read) --------------------------
    def steps(self, engine: str) -> str:
        return f"{self.prefix}steps:{engine}"

    @property
    def engines(self) -> str:
        return f"{self.prefix}engines"

    def model(self, engine: str) -> str:
        return f"{self.prefix}model:{engine}"

    def engine_load(self, engine: str) -> str:
        return f"{self.prefix}engine_load:{engine}"

    @property
    def prism_clock(self) -> str:
        return f"{self.prefix}prism_clock"

    def prism_share(self, replica: str) -> str:
        return f"{self.prefix}prism:{replica}"
