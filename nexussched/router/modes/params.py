"""FastDeploy's scheduler parameters (names and defaults), their validation and CLI flags.

`nexussched router --scheduler-name global ...` selects one of FastDeploy's modes instead of the
policy dispatcher. Each flag is accepted with hyphens throughout (`--scheduler-min-load-score`)
and in the mixed spelling FastDeploy's docs also use (`--scheduler-min-load_score`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from ...plane.client import RedisAddress

SCHEDULER_NAMES = ("local", "global", "splitwise")


@dataclass
class SchedulerParams:
    # FastDeploy's parameters
    name: str = "local"
    max_size: int = -1  # local: queued + unfinished requests per node; -1 unbounded
    ttl: float = 900.0  # all: seconds a request may live before it is expired
    host: str = "127.0.0.1"  # global, splitwise: Redis
    port: int = 6379
    db: int = 0
    password: str = ""
    topic: str = "default"  # only nodes with the same topic schedule together
    min_load_score: float = 3.0  # global: queued requests from which a node may be stolen from
    load_shards_num: int = 1  # global: shards of the load table
    sync_period: float = 5.0  # splitwise: seconds between node load reports
    expire_period: float = 3000.0  # splitwise: seconds without a report before a node is dropped
    release_load_expire_period: float = 600.0  # splitwise: release an unanswered request's load
    reader_parallel: int = 4  # splitwise: response lanes (reader tasks) per replica
    writer_parallel: int = 4  # splitwise: concurrent result writes per replica
    reader_batch_size: int = 200  # responses read per Redis call
    writer_batch_size: int = 200  # response events per Redis write
    # ours
    roles: str = ""  # splitwise: role per backend in order, e.g. "P,D,D" (default half/half)
    keepalive: float = 30.0  # node and replica keep-alive (FastDeploy's keep_alive_duration)
    lease: float = 10.0  # a claimed request returns to a queue this long after its worker died
    max_prefill_batch: int = 3  # requests a node takes per pull (FastDeploy's max_prefill_batch)
    kv_blocks: int = 4096  # assumed KV blocks per engine when only a usage fraction is scraped
    block_size: int = 16
    front_weights: str = ""  # local: weights of the front round robin over nodes
    replica_id: str = ""  # default: host:port of the router plus a random suffix
    redis_timeout: float = 5.0  # every Redis command (connect, send, answer) gives up after this
    progress_timeout: float = 30.0  # origin: no event this long -> check, re-queue or fail

    def validate(self) -> SchedulerParams:
        def bad(flag: str, msg: str) -> ValueError:
            return ValueError(f"--scheduler-{flag.replace('_', '-')}: {msg}")

        if self.name not in SCHEDULER_NAMES:
            raise bad(
                "name", f"unknown scheduler {self.name!r}; known: {', '.join(SCHEDULER_NAMES)}"
            )
        for f in (
            "ttl",
            "sync_period",
            "expire_period",
            "release_load_expire_period",
            "keepalive",
            "lease",
            "redis_timeout",
            "progress_timeout",
        ):
            v = getattr(self, f)
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise bad(f, f"must be a positive number of seconds, got {v!r}")
        if self.max_size != -1 and self.max_size <= 0:
            raise bad("max_size", f"must be -1 (unbounded) or positive, got {self.max_size}")
        if not 0 < self.port <= 65535:
            raise bad("port", f"{self.port} is out of range")
        if self.db < 0:
            raise bad("db", f"must be >= 0, got {self.db}")
        try:
            self.redis  # noqa: B018 - parses a cluster spec
        except ValueError as e:
            raise bad("host", str(e)) from None
        if not self.topic or any(c in self.topic for c in "{}: \t\n"):
            raise bad(
                "topic", f"must be non-empty without braces, colons or spaces: {self.topic!r}"
            )
        if self.min_load_score < 1:
            raise bad("min_load_score", f"must be >= 1, got {self.min_load_score}")
        for f in (
            "load_shards_num",
            "reader_parallel",
            "writer_parallel",
            "reader_batch_size",
            "writer_batch_size",
            "max_prefill_batch",
            "kv_blocks",
            "block_size",
        ):
            if getattr(self, f) < 1:
                raise bad(f, f"must be >= 1, got {getattr(self, f)}")
        return self

    @property
    def redis(self) -> RedisAddress:
        return RedisAddress.parse(self.host, self.port, self.db, self.password)


_HELP = {
    "name": "FastDeploy scheduler mode: local, global (work stealing over Redis) or splitwise "
    "(prefill/decode); unset: route with --policy",
    "max_size": "local: max queued + unfinished requests per node, -1 unbounded (HTTP 429 beyond)",
    "ttl": "seconds a request may live before it is expired (the client gets an error)",
    "host": "Redis host (global, splitwise); a Redis Cluster as seed nodes h1:p1,h2:p2 or "
    "redis+cluster://h1:p1,h2:p2",
    "port": "Redis port",
    "db": "Redis database",
    "password": "Redis password",
    "topic": "only nodes with the same topic schedule together",
    "min_load_score": "global: a node with at least this many queued requests may be stolen from",
    "load_shards_num": "global: shards of the load table",
    "sync_period": "splitwise: seconds between node load reports",
    "expire_period": "splitwise: seconds without a report before a node is dropped",
    "release_load_expire_period": "splitwise: seconds after which an unanswered request's load "
    "is released",
    "reader_parallel": "response reader lanes per replica",
    "writer_parallel": "concurrent result writers per replica",
    "reader_batch_size": "responses read per Redis call",
    "writer_batch_size": "response events written per Redis call",
    "roles": "splitwise: role of each backend in order, e.g. P,D,D (default: first half prefill)",
    "keepalive": "seconds a node or replica stays registered without renewing",
    "lease": "seconds after which work held by a dead node returns to a queue",
    "max_prefill_batch": "requests a node takes per pull",
    "kv_blocks": "KV blocks assumed per engine when only its usage fraction is known",
    "block_size": "KV block size (tokens) for the resource check",
    "front_weights": "local/global: weights of the front round robin over nodes, e.g. 4,2,1,1",
    "replica_id": "this replica's id in the plane (default: host:port + random suffix)",
    "redis_timeout": "seconds after which any Redis command (connect, write, answer) fails",
    "progress_timeout": "seconds without an event after which the origin checks a request: "
    "queued ones keep waiting, lost ones are queued again, others fail with a clear error",
}


def add_scheduler_args(parser: argparse.ArgumentParser) -> None:
    """Add --scheduler-* flags (both spellings) to a parser."""
    g = parser.add_argument_group("FastDeploy scheduler modes")
    defaults = SchedulerParams()
    for f in fields(SchedulerParams):
        dest = f"scheduler_{f.name}"
        head, _, rest = f.name.partition("_")
        names = [f"--scheduler-{f.name.replace('_', '-')}"]
        if rest:
            names.append(f"--scheduler-{head}-{rest}")  # FastDeploy docs' mixed spelling
            names.append(f"--scheduler-{f.name}")
        names = list(dict.fromkeys(names))
        default = getattr(defaults, f.name)
        typ = {int: int, float: float, str: str}[type(default)] if f.name != "name" else str
        g.add_argument(
            *names, dest=dest, type=typ, default=None, help=f"{_HELP[f.name]} (default {default!r})"
        )


def params_from_args(args: argparse.Namespace) -> SchedulerParams | None:
    """The scheduler parameters given on the command line; None when --scheduler-name is unset
    and no other --scheduler-* flag was given."""
    given = {f.name: getattr(args, f"scheduler_{f.name}", None) for f in fields(SchedulerParams)}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if "name" not in given:
        raise ValueError("--scheduler-* flags need --scheduler-name (local, global or splitwise)")
    return SchedulerParams(**given).validate()
