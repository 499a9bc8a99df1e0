"""The routing-policy interface, written once for both worlds.

A policy is a plain object. The live router and the cluster simulator both hand it a RequestInfo
and a sequence of EngineView objects (the information contract, view.py) and act on its answer;
neither the policy nor its math imports aiohttp or the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .view import EngineView


@dataclass(slots=True)
class RequestInfo:
    """What a router knows about a request when it must place it: its prompt's size and the
    client's declared `max_tokens`, never how long its output will really be."""

    id: object
    prompt_tokens: int
    max_tokens: int
    arrival: float
    slo_ttft: float
    slo_tpot: float
    priority: int = 0
    model: str = ""
    # hashes of the prompt's full KV blocks (block_size tokens each, chained: equal hashes mean
    # equal prefixes); what the router computes from the prompt it forwards
    prefix_hashes: tuple[int, ...] = ()


@dataclass(slots=True)
class Move:
    """Re-bind a request queued (not started) at engine `src` to engine `dst`."""

    req_id: object
    src: int
    dst: int


class RoutingPolicy:
    """Base policy. Subclasses implement `route`; the other hooks are optional.

    - route(): index of the engine to send a request to, or None to hold it at the router
      (only policies with `holds = True`; they keep the request and release it through pull()).
    - pull(): engine `idx` has room; return held requests it should take now.
    - on_finish(): a request finished on engine `idx` (bookkeeping); on_output() before it says
      how many tokens it produced; on_first_token() says an engine started answering one.
      on_end() is the two in one call (the live router and the simulator call it): a policy may
      fuse them there, as PRISM does (one look-up of its books per finished request).
    - tick(): called every `tick_interval` seconds; may return Moves (re-binding).
    - cancel(): a held request's client left; drop it (True if it was held here).
    - take_dropped(): requests the policy itself gave up on since the last call (e.g. a queue's
      TTL, or a request no engine can ever take), as (id, reason, message); the caller fails them.
    - held: how many requests it holds now (a holding policy must eventually release or drop each).
    """

    name: ClassVar[str] = "base"
    holds: ClassVar[bool] = False
    uses_prefix: bool = False  # reads RequestInfo.prefix_hashes (the live router computes them)
    tick_interval: ClassVar[float | None] = None

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int | None:
        raise NotImplementedError

    def pull(self, idx: int, engines: Sequence[EngineView], now: float) -> list[RequestInfo]:
        return []

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        return None

    def on_first_token(self, req_id: object, idx: int, now: float) -> None:
        """Engine `idx` started answering `req_id` (the router relays its first bytes)."""
        return None

    def on_output(self, req_id: object, output_tokens: int) -> None:
        """A request ended after `output_tokens` output tokens (the router counted them as it
        relayed them): the only time a router learns how long an output was. Called before
        on_finish, for requests that ended normally."""
        return None

    def on_end(self, req_id: object, idx: int, now: float, output_tokens: int | None) -> None:
        """A request ended on engine `idx`: on_output(output_tokens) where it ended normally
        (None: it did not, or its length is unknown), then on_finish. A policy that overrides
        on_end must keep exactly that meaning."""
        if output_tokens is not None:
            self.on_output(req_id, output_tokens)
        self.on_finish(req_id, idx, now)

    def tick(self, engines: Sequence[EngineView], now: float) -> list[Move]:
        return []

    def cancel(self, req_id: object) -> bool:
        return False

    def take_dropped(self) -> list[Dropped]:
        return []

    @property
    def held(self) -> int:
        return 0


@dataclass(slots=True)
class Dropped:
    """A request a policy gave up on: the caller fails it with this reason and message."""

    req_id: object
    reason: str  # "rejected" (it can never be served) or "expired" (a queue's TTL)
    message: str


class NoEngineAvailable(RuntimeError):
    """Every engine is unhealthy (the router answers 503)."""


def healthy_indices(engines: Sequence[EngineView]) -> list[int]:
    idx = [i for i, e in enumerate(engines) if e.healthy]
    if not idx:
        raise NoEngineAvailable("no healthy engine")
    return idx
