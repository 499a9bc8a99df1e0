"""Routing policies by name. Later policies register here so the CLI, the simulator and the live
router all build them the same way."""

from __future__ import annotations

from collections.abc import Callable

from .base import EngineView, Move, NoEngineAvailable, RequestInfo, RoutingPolicy, healthy_indices
from .simple import LeastLoad, RoundRobin

POLICIES: dict[str, Callable[..., RoutingPolicy]] = {
    "round_robin": RoundRobin,
    "least_load": LeastLoad,
}


def make_policy(name: str, **kwargs: object) -> RoutingPolicy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}"
        ) from None
    return factory(**kwargs)


__all__ = [
    "POLICIES",
    "EngineView",
    "LeastLoad",
    "Move",
    "NoEngineAvailable",
    "RequestInfo",
    "RoundRobin",
    "RoutingPolicy",
    "healthy_indices",
    "make_policy",
]
