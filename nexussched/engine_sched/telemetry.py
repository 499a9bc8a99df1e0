"""Step telemetry on a real engine: pairing each scheduled step with its completion.

A scheduler sees two calls per step: `schedule()` returns the batch, later `update_from_output()`
hands back its result. With asynchronous scheduling the next step is scheduled while the previous
one still runs, so calls interleave (schedule N+1 before update N). The step's execution time as
the scheduler sees it is therefore from the later of "its schedule() returned" and "the previous
step's update arrived" to "its own update arrived".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..perfmodel import StepRecord


@dataclass(slots=True)
class PendingStep:
    key: object  # the engine's batch object (identity), e.g. vLLM's SchedulerOutput
    scheduled_at: float  # monotonic clock when schedule() returned
    record: StepRecord  # batch composition; duration filled when the step completes
    extra: dict = field(default_factory=dict)


class StepClock:
    """FIFO of scheduled steps; `complete(key, now)` returns the finished step with its duration."""

    def __init__(self) -> None:
        self._pending: deque[PendingStep] = deque()
        self._last_done: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def scheduled(self, key: object, now: float, record: StepRecord, **extra: object) -> None:
        self._pending.append(PendingStep(key, now, record, dict(extra)))

    def complete(self, key: object, now: float) -> PendingStep | None:
        """The pending step `key` finished at `now`; steps queued before it are dropped (an engine
        that skipped their update, e.g. an empty batch), so a lost update never shifts the pairing."""
        while self._pending:
            p = self._pending.popleft()
            if p.key is key:
                start = p.scheduled_at
                if self._last_done is not None and self._last_done > start:
                    start = self._last_done
                self._last_done = now
                p.record.duration = max(now - start, 0.0)
                return p
        self._last_done = now
        return None
