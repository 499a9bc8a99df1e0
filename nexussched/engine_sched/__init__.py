"""Engine-side batch planning: the policy interface, baselines (vLLM default, Sarathi-style) and LENS.

The vLLM scheduler plug-in lives in vllm_plugin.py and is never imported from here (vLLM is optional).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import EnginePolicy, VllmDefault
from .lens import LensConfig, PlanInfo, plan_step
from .plan import SeqState, StepPlan, StepState
from .policies import LensPolicy, SarathiPolicy

# name -> factory(engine_name) building one policy instance per engine
ENGINE_POLICIES: dict[str, Callable[..., EnginePolicy]] = {
    "vllm_default": lambda **kw: VllmDefault(),
    "sarathi": lambda **kw: SarathiPolicy(**kw),
    "lens": lambda **kw: LensPolicy(**kw),
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
    "LensConfig",
    "LensPolicy",
    "PlanInfo",
    "SarathiPolicy",
    "SeqState",
    "StepPlan",
    "StepState",
    "VllmDefault",
    "make_engine_policy",
    "plan_step",
]
