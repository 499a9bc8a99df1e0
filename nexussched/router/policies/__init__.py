"""Routing policies by name. Later policies register here so the CLI, the simulator and the live
router all build them the same way."""

from __future__ import annotations

from collections.abc import Callable

from .base import (
    Dropped,
    EngineView,
    Move,
    NoEngineAvailable,
    RequestInfo,
    RoutingPolicy,
    healthy_indices,
)
from .fastdeploy_modes import FastDeployGlobal, FastDeployLocal, QueueFull, TooLarge
from .fastdeploy_splitwise import FastDeploySplitwise
from .prefix_oracle import PrefixOracle
from .prism import Prism, PrismConfig, SloUnattainable
from .sglang import SglangCacheAware
from .simple import LeastLoad, RoundRobin
from .view import ORACLE_ATTRS, SCRAPE_PERIOD, TELEMETRY_POLL, VIEW_ATTRS
from .weighted import WeightedScorer

POLICIES: dict[str, Callable[..., RoutingPolicy]] = {
    "round_robin": RoundRobin,
    "least_load": LeastLoad,
    # FastDeploy's scheduler modes (baselines): per-node queues, work stealing, P/D split
    "local": FastDeployLocal,
    "global": FastDeployGlobal,
    "splitwise": FastDeploySplitwise,
    # predictive SLO-aware routing (PRISM) and an llm-d-style weighted scorer baseline
    "prism": Prism,
    "llmd_weighted": WeightedScorer,
    # SGLang's router default (cache-aware), and an oracle placement on real cache contents
    "sglang_cache_aware": SglangCacheAware,
    "prefix_oracle": PrefixOracle,
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
    "ORACLE_ATTRS",
    "POLICIES",
    "SCRAPE_PERIOD",
    "TELEMETRY_POLL",
    "VIEW_ATTRS",
    "Dropped",
    "EngineView",
    "FastDeployGlobal",
    "FastDeployLocal",
    "FastDeploySplitwise",
    "LeastLoad",
    "Move",
    "NoEngineAvailable",
    "PrefixOracle",
    "Prism",
    "PrismConfig",
    "QueueFull",
    "RequestInfo",
    "RoundRobin",
    "RoutingPolicy",
    "SglangCacheAware",
    "SloUnattainable",
    "TooLarge",
    "WeightedScorer",
    "healthy_indices",
    "make_policy",
]
