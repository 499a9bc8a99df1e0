"""A request's life inside the simulated cluster."""

from __future__ import annotations

import math

from ..engine_sched.plan import SeqState


class SimRequest:
    """Mutable per-request state; slots keep the hot loops cheap."""

    __slots__ = (
        "id",
        "arrival",
        "prompt",
        "output",
        "slo_ttft",
        "slo_tpot",
        "priority",
        "computed",
        "generated",
        "blocks",
        "first_token",
        "finish",
        "last_token",
        "max_itl",
        "preemptions",
        "enqueue_time",
        "engine_name",
        "moves",
        "dispatch_time",
        "tag",
    )

    def __init__(
        self,
        id: int,
        arrival: float,
        prompt: int,
        output: int,
        slo_ttft: float,
        slo_tpot: float,
        priority: int = 0,
    ) -> None:
        self.id = id
        self.arrival = arrival
        self.prompt = max(1, prompt)
        self.output = max(1, output)
        self.slo_ttft = slo_ttft
        self.slo_tpot = slo_tpot
        self.priority = priority
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.first_token = math.nan
        self.finish = math.nan
        self.last_token = math.nan
        self.max_itl = 0.0
        self.preemptions = 0
        self.enqueue_time = math.nan
        self.dispatch_time = math.nan
        self.engine_name = ""
        self.moves = 0
        self.tag: object = None  # free slot for a cluster mode's bookkeeping

    def seq_state(self, running: bool) -> SeqState:
        # Positional (SeqState's field order): built for every sequence every planned step, and
        # keyword construction is 2-3x slower.
        ft = self.first_token
        return SeqState(
            self.id,
            self.prompt,
            self.computed,
            self.generated,
            self.output,
            self.arrival,
            running,
            self.slo_ttft,
            self.slo_tpot,
            self.priority,
            None if ft != ft else ft,
        )

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (vLLM benchmark's TPOT); 0 for 1 token."""
        if self.generated <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.generated - 1)

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival
