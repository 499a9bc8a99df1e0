"""Engine-side batch planning: the policy interface, baselines and (later) LENS."""

from __future__ import annotations

from collections.abc import Callable

from .base import EnginePolicy, VllmDefault
from .plan import SeqState, StepPlan, StepState

# name -> factory(engine_name) building one policy instance per engine
ENGINE_POLICIES: dict[str, Callable[..., EnginePolicy]] = {
    "vllm_default": lambda **kw: VllmDefault(),
}


def make_engine_policy(name: str, **kwargs: object) -> EnginePolicy:
    try:
        factory = ENGINE_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine policy {name!r}; known: {', '.join(sorted(ENGINE_POLICIES))}"
        ) from None
    return factory(**kwargs)


__all__ = [
    "ENGINE_POLICIES",
    "EnginePolicy",
    "SeqState",
    "StepPlan",
    "StepState",
    "VllmDefault",
    "make_engine_policy",
]
