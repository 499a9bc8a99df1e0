"""Learning at a budget: which step records a live router learns from when an engine steps faster
than the router needs to learn.

A record costs the router about the same to decode and learn from (about 66k instructions, three
quarters of them decoding it) whatever the engine's speed, so an engine stepping 1,000 times a second
costs it a share of a core, in every worker and every replica, for a 5-term model that 100
records a second already pin down (real engines step up to 100-200 times a second; engine-sim at
--time-scale 0 steps far faster). Above `budget` records a second per engine the feed learns 1
record in 2**level (reading only the step number of the others), chosen by a hash of
the record's step number, not by when it arrived: every replica and worker at the same level
learns exactly the same records, one a level higher learns a subset of them (the hash is a
prefix test, so levels nest), and a periodic pattern in the steps (a prefill every 4th step)
cannot alias with the choice. The level follows the rate the feed receives, with hysteresis;
an engine's first LEARN_WARMUP records are all learned.

Used by the HTTP feed (router/telemetry_feed.py: engine-sim's GET /telemetry). The Redis stream
feed still learns every record: its publishers are real engines (the vLLM plug-in), which step
within the budget's order of magnitude.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LEARN_BUDGET = 100.0  # step records learned per second per engine, at most (about)
# records of an engine learned whole before any thinning: the model's window (perfmodel's
# PerfModelConfig.window), so a short burst (a test, a cold start) still teaches a full model
LEARN_WARMUP = 1024
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of step * golden ratio * 2**64
_MASK = (1 << 64) - 1
_STEP = re.compile(r'"step":(\d+)')
_STEP_B = re.compile(rb'"step":(\d+)')


def kept(step: int, level: int) -> bool:
    """Whether the record of step `step` is learned at `level` (1 in 2**level of the steps;
    every step kept at level k + 1 is kept at level k)."""
    return level <= 0 or ((step * _GOLDEN) & _MASK) >> (64 - level) == 0


def step_of(line: str | bytes) -> int | None:
    """The step number of a step record in JSON, read without decoding the record (the key
    `"step":` cannot occur inside a JSON string: its quotes would be escaped); None if absent."""
    if isinstance(line, str):
        m = _STEP.match(line, max(0, line.rfind('"step":')))
    else:
        m = _STEP_B.match(line, max(0, line.rfind(b'"step":')))
    return int(m.group(1)) if m is not None else None


def thin(lines: list[str], level: int) -> tuple[list[str], int]:
    """The lines whose records are learned at `level` (and any whose step cannot be read
    cheaply), and the highest step among the others (-1 if none)."""
    if level <= 0:
        return lines, -1
    keep = []
    top = -1
    shift = 64 - level
    for line in lines:
        # step_of(line), inlined: this loop runs for every record an engine publishes
        i = line.rfind('"step":')
        if i >= 0:
            j = line.find(",", i)
            if j < 0:
                j = line.find("}", i)
            try:
                s = int(line[i + 7 : j])
            except ValueError:
                keep.append(line)
                continue
            if ((s * _GOLDEN) & _MASK) >> shift:
                if s > top:
                    top = s
                continue
        keep.append(line)
    return keep, top


@dataclass(slots=True)
class RateGate:
    """The thinning level of one engine's records, from the rate they arrive at (records a
    second, smoothed over polls). `budget` <= 0: every record is learned."""

    budget: float = LEARN_BUDGET
    level: int = 0
    rate: float = -1.0  # smoothed records per second; < 0 until two polls have been seen
    _t: float | None = None

    def update(self, n: int, now: float) -> int:
        """`n` records arrived by `now` since the previous call: the level to learn them at."""
        t, self._t = self._t, now
        if self.budget <= 0 or t is None or now <= t:
            return self.level
        r = n / (now - t)
        self.rate = r if self.rate < 0 else self.rate + (r - self.rate) * 0.3
        want = max(0, math.ceil(math.log2(self.rate / self.budget))) if self.rate > 0 else 0
        if want > self.level:
            self.level = want
        elif want < self.level and self.rate < 0.8 * self.budget * 2 ** (self.level - 1):
            self.level = want  # well under the next level down's budget: no flapping at the edge
        return self.level
