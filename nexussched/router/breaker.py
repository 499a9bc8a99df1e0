"""Per-backend circuit breaker and retry backoff (pure: the caller passes the clock and the RNG).

Breaker: `threshold` consecutive failures (connection failures, 5xx answers, streams broken by
the backend) open it; while open the backend is out of rotation. After `cooldown` seconds it is
half-open: the backend goes back in rotation for one trial request, which closes the breaker if
the backend answers (any status below 500) and opens it again otherwise. Client errors (4xx)
are answers: they never count as failures. A threshold of 0 disables the breaker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    threshold: int = 5
    cooldown: float = 10.0
    state: str = CLOSED
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    trial: bool = False  # half-open: the trial request is in flight
    opens: int = 0  # times opened, for /backends and metrics

    def failure(self, now: float) -> bool:
        """Count a failure; True when this failure opened the breaker."""
        if self.threshold <= 0:
            return False
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.state = OPEN
            self.opened_at = now
            self.trial = False
            self.opens += 1
            return True
        return False

    def success(self) -> bool:
        """Count an answer; True when it closed a half-open breaker."""
        self.failures = 0
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.trial = False
            return True
        return False

    def cooled(self, now: float) -> bool:
        """Open and past its cooldown: move to half-open (True) so a trial may go."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown:
            self.state = HALF_OPEN
            self.trial = False
            return True
        return False

    @property
    def blocks(self) -> bool:
        """No request may go now: open, or half-open with its trial already in flight."""
        return self.state == OPEN or (self.state == HALF_OPEN and self.trial)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): capped exponential backoff with
    "equal jitter" (half fixed, half random), so retries of many clients spread out."""
    if attempt <= 0 or base <= 0:
        return 0.0
    d = min(cap, base * 2.0 ** (attempt - 1))
    return d / 2.0 + rng.random() * d / 2.0
