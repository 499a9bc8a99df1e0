"""Online output-length estimates from the lengths of finished requests.

A router or an engine knows a request's declared `max_tokens`, never how long its output will be.
What it can learn is how the requests that finished ended (the router counts the tokens it
relays; the engine sees each request end): either at their max_tokens (vLLM's finish reason
"length"), or earlier (they stopped by themselves). LengthEstimator keeps a window of recent
requests: which of them ran to their max_tokens, and the lengths of those that stopped earlier.
For a request that has generated `g` tokens so far under max_tokens `m` it answers the expected
final length, a mixture of the two kinds given that the request has outlived `g`:

    P(runs to m) x m + P(stops early) x E[min(L, m) | L > g, L stopped early]

So clients that declare their true lengths are believed (they all run to max_tokens), and a
generous cap is not (few requests reach it; their length comes from the others').

Until `min_samples` requests (default one) have finished it has nothing to go on and answers the
cap (the only thing the client declared). A request that has outlived every finished one is
expected to run as long again as it has (capped). Queries are O(log n) on a sorted copy of the
window, rebuilt when a sixteenth of it is new.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import accumulate


class LengthEstimator:
    def __init__(self, window: int = 4096, min_samples: int = 1) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("LengthEstimator: window and min_samples must be >= 1")
        self.window = window
        self.min_samples = min_samples
        # recent finished requests: final length, or 0 for one that ran to its max_tokens
        self._recent: deque[int] = deque(maxlen=window)
        self._hits = 0  # of _recent, how many ran to their max_tokens
        self._sorted: list[int] = []  # lengths of those that stopped early, sorted
        self._prefix: list[float] = [0.0]  # prefix sums of _sorted
        self._new = 0
        self.observed = 0

    def observe(self, output_tokens: int, max_tokens: int | None = None) -> None:
        """A request with `max_tokens` declared (None: unknown) ended after `output_tokens`."""
        if output_tokens < 1:
            return
        hit = max_tokens is not None and output_tokens >= max_tokens
        if len(self._recent) == self.window and self._recent[0] == 0:
            self._hits -= 1
        self._recent.append(0 if hit else int(output_tokens))
        self._hits += hit
        self._new += 1
        self.observed += 1

    def _refresh(self) -> list[int]:
        if self._new and self._new * 16 >= len(self._recent):
            # in C: the early stops (non-zero entries) sorted, and their running sums from 0.0
            # (the same floats as adding them one by one)
            xs = sorted(filter(None, self._recent))
            self._sorted, self._prefix, self._new = xs, list(accumulate(xs, initial=0.0)), 0
        return self._sorted

    @property
    def samples(self) -> int:
        return len(self._recent)

    @property
    def hit_share(self) -> float:
        """Share of recent requests that ran to their max_tokens."""
        return self._hits / len(self._recent) if self._recent else 0.0

    def expected_total(self, generated: int = 0, cap: int | None = None) -> float:
        """Expected final output length of a request with `generated` tokens so far and
        `max_tokens` = cap (None: uncapped)."""
        g = max(0, int(generated))
        m = float(cap) if cap is not None else float("inf")
        if m <= g + 1:
            return m if m > g else float(g + 1)
        k = len(self._recent)
        if k < self.min_samples:
            return m if cap is not None else float(max(g + 1, 2 * g))
        # _refresh() and hit_share, inlined: every routed request asks this
        xs = self._refresh() if self._new and self._new * 16 >= k else self._sorted
        n = len(xs)
        p_hit = (self._hits / k if k else 0.0) if cap is not None else 0.0
        i = bisect.bisect_right(xs, g)
        tail = n - i
        # weights of "runs to its cap" and "stops early, after g" given that it outlived g
        w_stop = (1.0 - p_hit) * tail / n if n else 0.0
        if p_hit + w_stop <= 0.0:  # it outlived every finished request
            return min(m, float(max(g + 1, 2 * g)))
        e_stop = 0.0
        if tail:
            pre = self._prefix
            if cap is None:
                e_stop = (pre[n] - pre[i]) / tail
            else:
                j = bisect.bisect_right(xs, m, lo=i)
                e_stop = ((pre[j] - pre[i]) + (n - j) * m) / tail
        return (p_hit * m + w_stop * e_stop) / (p_hit + w_stop)

    def expected_new(self, cap: int) -> float:
        """expected_total(0, cap) for a request not started yet, cap >= 1 (every routed request
        asks this): the same arithmetic with g = 0, where every recorded length (>= 1) lies
        past g, so the bisection for g is known."""
        m = float(cap)
        if m <= 1.0:
            return m
        k = len(self._recent)
        if k < self.min_samples:
            return m
        xs = self._refresh() if self._new and self._new * 16 >= k else self._sorted
        n = len(xs)
        p_hit = self._hits / k
        w_stop = (1.0 - p_hit) * n / n if n else 0.0
        if p_hit + w_stop <= 0.0:
            return m if m < 1.0 else 1.0
        e_stop = 0.0
        if n:
            pre = self._prefix
            j = bisect.bisect_right(xs, m)
            e_stop = ((pre[j] - pre[0]) + (n - j) * m) / n
        return (p_hit * m + w_stop * e_stop) / (p_hit + w_stop)

    def expected_remaining(self, generated: int, cap: int | None = None) -> float:
        """Expected output tokens still to come (at least one)."""
        return max(1.0, self.expected_total(generated, cap) - generated)

    def mean(self) -> float | None:
        """Mean length of the recent requests that stopped before their max_tokens."""
        xs = self._refresh()
        return self._prefix[-1] / len(xs) if xs else None
