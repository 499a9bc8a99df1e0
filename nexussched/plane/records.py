"""Records that travel through the plane (JSON on the wire)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Claimed:
    """A request a node took from a queue, under a lease for this attempt."""

    rid: str
    attempt: int
    payload: str
    origin: str
    lane: int
    home: str
    stolen: bool


@dataclass(slots=True)
class Chunk:
    """Response events on their way to the origin replica.

    `seq` is the index (within the attempt) of the first of `events` (whole SSE events, or one
    whole body when not streaming). A retried attempt starts again at 0; the origin delivers each
    index once, so the client never sees an event twice (at-least-once execution, exactly-once
    delivery). `status`/`content_type` describe the engine's answer; `fin` ends it.
    """

    rid: str
    attempt: int
    seq: int
    events: list[str] = field(default_factory=list)
    fin: bool = False
    status: int = 200
    content_type: str = ""
    node: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Chunk:
        return cls(**json.loads(text))


@dataclass(slots=True)
class NodeInfo:
    """A node as the registry publishes it."""

    name: str
    role: str = "mixed"  # mixed | prefill | decode
    shard: int = 0
    url: str = ""
    owner: str = ""  # replica driving it
    load: int = 0  # splitwise: prompt tokens (prefill) or requests (decode) outstanding
    ts: float = 0.0  # Redis server time (s) of the last report
    alive: bool = True

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("alive")
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NodeInfo:
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
