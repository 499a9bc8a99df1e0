"""Connecting to the plane's Redis (one server, or a Redis Cluster), with one-line errors users
can act on.

A cluster is named by several seed nodes (`h1:p1,h2:p2`) or a `redis+cluster://h1:p1,h2:p2` URL;
the plane then talks through redis-py's cluster client, which follows slot moves and failovers.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, TimeoutError


class PlaneUnavailable(RuntimeError):
    """Redis cannot be reached or refused us; the message is one line naming where and why."""


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str = ""
    cluster_nodes: tuple[tuple[str, int], ...] = ()  # seed nodes of a Redis Cluster

    @property
    def cluster(self) -> bool:
        return bool(self.cluster_nodes)

    def __str__(self) -> str:
        if self.cluster:
            return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.cluster_nodes)
        return f"redis://{self.host}:{self.port}/{self.db}"

    @classmethod
    def parse(cls, host: str, port: int = 6379, db: int = 0, password: str = "") -> RedisAddress:
        """A host, or a cluster: `h1:p1,h2:p2` or `redis+cluster://h1:p1,h2:p2` (a node without a
        port uses `port`). ValueError with a one-line reason for a bad spec."""
        spec = host.strip()
        is_cluster = spec.startswith("redis+cluster://")
        if is_cluster:
            spec = spec[len("redis+cluster://") :].rstrip("/")
        if not is_cluster and "," not in spec:
            return cls(spec, port, db, password)
        nodes = []
        for part in spec.split(","):
            h, sep, p = part.strip().rpartition(":")
            if not sep:
                h, p = part.strip(), str(port)
            try:
                pn = int(p)
            except ValueError:
                raise ValueError(f"bad Redis Cluster node {part!r}: expected host:port") from None
            if not h or not 0 < pn <= 65535:
                raise ValueError(f"bad Redis Cluster node {part!r}: expected host:port")
            nodes.append((h, pn))
        if db != 0:
            raise ValueError("a Redis Cluster has only database 0")
        return cls(nodes[0][0], nodes[0][1], 0, password, tuple(nodes))


def describe_error(addr: RedisAddress, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Redis at {addr} unavailable: {reason}"


def make_client(
    addr: RedisAddress, timeout: float = 5.0, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled asyncio client (hiredis parser when installed). Does not connect yet.

    For a cluster address, redis-py's cluster client (same command API; it routes each command
    by its key's slot, a script by its KEYS[1]).

    The pool blocks (up to `timeout`) when all its connections are busy, rather than failing:
    a burst of requests waits its turn for a connection. Every command gives up after `timeout`
    (socket timeout): a stalled Redis costs a caller at most that, never a silent hang. Blocking
    commands (BLMPOP, BLPOP) must block for less than it."""
    if addr.cluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in addr.cluster_nodes],
            password=addr.password or None,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            max_connections=max_connections,
        )
    pool = aioredis.BlockingConnectionPool(
        max_connections=max_connections,
        timeout=timeout,
        host=addr.host,
        port=addr.port,
        db=addr.db,
        password=addr.password or None,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=0,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


async def connect(addr: RedisAddress, timeout: float = 5.0) -> aioredis.Redis:
    """A client that answered PING, or PlaneUnavailable with a one-line reason."""
    client = make_client(addr, timeout)
    try:
        await client.ping()
        info = await client.info("server")
    except AuthenticationError as e:
        await client.aclose()
        raise PlaneUnavailable(describe_error(addr, e)) from None
    except (ConnectionError, TimeoutError, OSError, RedisError) as e:
        await client.aclose()
        raise PlaneUnavailable(describe_error(addr, e)) from None
    if "redis_version" not in info and info:  # a cluster client may answer per node
        info = next(iter(info.values()))
    version = str(info.get("redis_version", "0") if isinstance(info, dict) else "0")
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) < (7, 0):
        await client.aclose()
        raise PlaneUnavailable(f"Redis at {addr} is {version}; the plane needs 7.0+ (BLMPOP)")
    return client


PLANE_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)
