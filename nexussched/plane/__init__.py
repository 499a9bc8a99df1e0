"""The Redis state plane: key layout, per-node queues, sharded load table, node registry with
keep-alives, leases, and the Lua scripts that change them atomically. See keys.py for the layout.
"""

from .client import PLANE_ERRORS, PlaneUnavailable, RedisAddress, connect, describe_error
from .keys import KeySpace, crc16, shard_of
from .leases import Leases
from .loadtable import LoadTable
from .plane import Plane
from .queues import RequestQueues, ResponseQueues, lane_of
from .records import Chunk, Claimed, NodeInfo
from .registry import Registry

__all__ = [
    "PLANE_ERRORS",
    "Chunk",
    "Claimed",
    "KeySpace",
    "Leases",
    "LoadTable",
    "NodeInfo",
    "Plane",
    "PlaneUnavailable",
    "RedisAddress",
    "Registry",
    "RequestQueues",
    "ResponseQueues",
    "connect",
    "crc16",
    "describe_error",
    "lane_of",
    "shard_of",
]
