"""Engine-agnostic step state and step plan: the contract between an engine and its batch planner.

An engine (the simulator, or vLLM through the scheduler plug-in) builds a StepState each step and
asks its EnginePolicy for a StepPlan; the engine then executes vLLM's own batching mechanics with
the plan's token budget, prefill order and chunk caps.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SeqState:
    """One sequence as the planner sees it."""

    id: object
    prompt_tokens: int
    computed: int  # tokens with KV computed
    generated: int  # output tokens produced so far
    max_tokens: int  # declared by the client: a planner never knows the true output length
    arrival: float
    running: bool
    slo_ttft: float
    slo_tpot: float
    priority: int = 0
    first_token_time: float | None = None

    @property
    def need(self) -> int:
        """Tokens to compute before the next output token."""
        return self.prompt_tokens + self.generated - self.computed

    @property
    def is_decode(self) -> bool:
        return self.generated > 0 and self.need == 1


@dataclass(slots=True)
class StepState:
    now: float
    decodes: list[SeqState]
    prefills: list[SeqState]  # running partial prefills first, then waiting in FCFS order
    free_blocks: int
    total_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    num_running: int


@dataclass(slots=True)
class StepPlan:
    """What to run this step. `order` lists prefill sequence ids in service order (None: FCFS)."""

    token_budget: int
    order: list | None = None
    chunk_cap: dict = field(default_factory=dict)
