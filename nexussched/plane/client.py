"""Connecting to the plane's Redis, with one-line errors users can act on."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, TimeoutError


class PlaneUnavailable(RuntimeError):
    """Redis cannot be reached or refused us; the message is one line naming where and why."""


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str = ""

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def describe_error(addr: RedisAddress, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Redis at {addr} unavailable: {reason}"


def make_client(
    addr: RedisAddress, timeout: float = 5.0, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled asyncio client (hiredis parser when installed). Does not connect yet.

    The pool blocks (up to `timeout`) when all its connections are busy, rather than failing:
    a burst of requests waits its turn for a connection. Every command gives up after `timeout`
    (socket timeout): a stalled Redis costs a caller at most that, never a silent hang. Blocking
    commands (BLMPOP, BLPOP) must block for less than it."""
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
    version = str(info.get("redis_version", "0"))
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) < (7, 0):
        await client.aclose()
        raise PlaneUnavailable(f"Redis at {addr} is {version}; the plane needs 7.0+ (BLMPOP)")
    return client


PLANE_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)
