"""Step telemetry on a real engine: pairing each scheduled step with its completion.

A scheduler sees two calls per step: `schedule()` returns the batch, later `update_from_output()`
hands back its result. With asynchronous scheduling the next step is scheduled while the previous
one still runs, so calls interleave (schedule N+1 before update N). The step's execution time as
the scheduler sees it is therefore from the later of "its schedule() returned" and "the previous
step's update arrived" to "its own update arrived".
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from ..perfmodel import PerfModel, StepRecord
from .publish import Publisher


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


# The plug-in's drift rule: on a real (CPU) engine single steps jitter by 2x, so a reset needs a
# sustained 1.5x bias over 200 steps; the default (1.25x over 48) fired on noise and dropped the
# prefill terms with the old window.
PLUGIN_DRIFT_RATIO = 1.5
PLUGIN_DRIFT_WINDOW = 200


class StepSink:
    """Where the plug-in sends each finished step: the learner, the JSONL file and the publisher.

    vLLM-free (so it is tested without vLLM): `learn(rec)` refines the engine's model, `model` is
    the model to publish, `load()` builds a load snapshot (called at most once per publish period).
    """

    def __init__(
        self,
        learn: Callable[[StepRecord], None],
        model: Callable[[], PerfModel],
        load: Callable[[], dict],
        out: TextIO | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.learn = learn
        self.model = model
        self.load = load
        self.out = out
        self.publisher = publisher
        self.steps = 0

    def on_step(self, rec: StepRecord, extra: dict | None = None, idle: bool = False) -> None:
        """`idle`: this step left the engine with nothing to run. Its load snapshot then goes out
        at once, not at the next period (no step would come to send it): the plane shows the idle
        engine and the counts of its last work instead of the last busy snapshot."""
        m = self.model()
        predicted = m.predict(rec.prefill_chunks, rec.num_decodes, rec.decode_ctx_sum)
        self.learn(rec)
        self.steps += 1
        if self.out is not None:
            d = rec.to_dict()
            if extra:
                d.update(extra)
            d["predicted"] = predicted
            self.out.write(json.dumps(d, separators=(",", ":")) + "\n")
        pub = self.publisher
        if pub is not None:
            pub.step(rec)
            if idle or pub.due():
                pub.offer(m, self.steps, self.load())

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.offer(
                self.model(), self.steps, self.load()
            )  # the latest, on the way out
            self.publisher.close()
            self.publisher = None
        if self.out is not None:
            self.out.close()
            self.out = None
