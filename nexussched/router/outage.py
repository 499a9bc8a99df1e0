"""Say a recurring failure once: when it starts, then at most once per interval while it lasts,
and once when it ends (a background loop retrying Redis every 50 ms must not log 20 lines a s)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class OutageLog:
    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.log = logger
        self.every = every
        self.clock = clock
        self.since: float | None = None  # when the current outage began
        self.last = 0.0  # when it was last logged
        self.failures = 0

    def fail(self, e: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        msg = str(e).splitlines()[0] if str(e) else repr(e)
        if self.since is None:
            self.since, self.last = now, now
            self.log.error("%s: %s (retrying; logged again every %g s while it lasts)",
                           self.what, msg, self.every)  # fmt: skip
        elif now - self.last >= self.every:
            self.last = now
            self.log.error("%s: still failing after %.0f s (%d tries): %s",
                           self.what, now - self.since, self.failures, msg)  # fmt: skip

    def ok(self) -> None:
        if self.since is not None:
            self.log.warning("%s: recovered after %.0f s", self.what, self.clock() - self.since)
            self.since = None
            self.failures = 0
