"""Step-time noise of the simulated engine: multiplicative lognormal with rare stragglers."""

from __future__ import annotations

import numpy as np

from .hardware import lognormal_sigma


class NoiseStream:
    """Multiplicative step-time noise: lognormal with rare stragglers, drawn in blocks."""

    def __init__(self, rng: np.random.Generator, cv: float, p_strag: float, f_strag: float) -> None:
        self._rng = rng
        self._sigma = lognormal_sigma(cv)
        self._p = p_strag
        self._f = f_strag
        self._buf: list[float] = []
        self._i = 0

    def _refill(self) -> None:
        n = 8192
        s = self._sigma
        x = self._rng.lognormal(-s * s / 2.0, s, n)
        x[self._rng.random(n) < self._p] *= self._f
        self._buf = x.tolist()
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._refill()
        v = self._buf[self._i]
        self._i += 1
        return v
