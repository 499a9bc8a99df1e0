"""Engine policy interface and the vLLM-default baseline."""

from __future__ import annotations

from typing import ClassVar

from ..perfmodel import StepRecord
from .plan import StepPlan, StepState


class EnginePolicy:
    """Decides each step's batch. The base class is vLLM's default: FCFS with a fixed token budget.

    `plans` tells the engine whether to build a StepState and call `plan()` each step (costly in the
    simulator); a policy that only sets the budget leaves it False.
    """

    name: ClassVar[str] = "vllm_default"
    plans: ClassVar[bool] = False
    learns: ClassVar[bool] = False  # True: the engine feeds every step record to observe()

    def token_budget(self, max_num_batched_tokens: int) -> int:
        return max_num_batched_tokens

    def plan(self, state: StepState) -> StepPlan | None:
        return None

    def fast_decode_ok(self) -> bool:
        """Whether a run of decode-only steps with nothing admissible may be simulated in bulk."""
        return True

    def observe(self, rec: StepRecord) -> None:
        """Step telemetry of the engine this policy drives (online learning hook)."""

    def finished(self, seq_id: object, output_tokens: int, max_tokens: int) -> None:
        """A sequence declaring `max_tokens` ended after `output_tokens` output tokens: the only
        moment an engine learns how long a request's output was."""


class VllmDefault(EnginePolicy):
    name = "vllm_default"
