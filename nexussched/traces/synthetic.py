"""Synthetic workloads: arrival processes, length distributions and named scenarios.

Everything draws from `numpy.random.default_rng(seed)`, so a seed fixes the trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .types import Trace, TraceRequest

SYNTHETIC_PREFIX = "synthetic:"

# ---------------------------------------------------------------------------- arrival processes


def _check_rate(rate: float, n: int) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"arrival rate must be a positive number, got {rate!r}")
    if n < 0:
        raise ValueError(f"request count must be >= 0, got {n!r}")


def _from_gaps(gaps: np.ndarray, n: int) -> np.ndarray:
    # The first request arrives at 0, like every loaded trace.
    return np.concatenate(([0.0], np.cumsum(gaps)))[:n]


def poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n arrival times (s) of a Poisson process of `rate` req/s, starting at 0."""
    _check_rate(rate, n)
    return _from_gaps(rng.exponential(1.0 / rate, size=max(n - 1, 0)), n)


def gamma_arrivals(rate: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n arrival times with Gamma inter-arrivals of mean 1/rate and coefficient of variation cv.

    Shape 1/cv^2 gives that CV: cv=1 is Poisson, cv>1 is bursty, cv<1 is smoother.
    """
    _check_rate(rate, n)
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"arrival cv must be a positive number, got {cv!r}")
    shape = 1.0 / cv**2
    return _from_gaps(rng.gamma(shape, 1.0 / (rate * shape), size=max(n - 1, 0)), n)


# ---------------------------------------------------------------------------- lengths

LengthKind = Literal["fixed", "uniform", "lognormal"]


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Token-length distribution with a target mean and CV, rounded and clipped to [min, max].

    `mean` is before clipping, so heavy clipping pulls the realised mean in.
    """

    kind: LengthKind = "lognormal"
    mean: float = 1000.0
    cv: float = 0.0
    min: int = 1
    max: int = 1_000_000

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(f"length kind must be fixed, uniform or lognormal, got {self.kind!r}")
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"length mean must be positive, got {self.mean!r}")
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"length cv must be >= 0, got {self.cv!r}")
        if not 1 <= self.min <= self.max:
            raise ValueError(f"length bounds need 1 <= min <= max, got [{self.min}, {self.max}]")
        if self.kind == "uniform" and self.cv > 1 / math.sqrt(3):
            # Beyond this the uniform's lower end would be negative.
            raise ValueError(f"uniform lengths need cv <= 0.577, got {self.cv!r}")

    def with_mean(self, mean: float) -> LengthDist:
        return replace(self, mean=float(mean))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n integer lengths (int64)."""
        if self.kind == "fixed" or self.cv == 0:
            x = np.full(n, self.mean)
        elif self.kind == "uniform":
            half = math.sqrt(3.0) * self.cv * self.mean  # uniform std = half-width / sqrt(3)
            x = rng.uniform(self.mean - half, self.mean + half, size=n)
        else:
            sigma2 = math.log1p(self.cv**2)
            x = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


@dataclass(frozen=True, slots=True)
class WorkloadClass:
    """One component of a mixed workload: its share and its prompt/output lengths."""

    weight: float
    prompt: LengthDist
    output: LengthDist


# Shaped on Azure 2023 conv: ~1,155 tokens in (CV ~1), ~211 out (CV ~0.8).
CONV_PROMPT = LengthDist("lognormal", 1100, 1.0, 1, 16384)
CONV_OUTPUT = LengthDist("lognormal", 200, 0.8, 1, 2048)


def synthetic_trace(
    arrival: Literal["poisson", "gamma"] = "poisson",
    rate: float = 10.0,
    n: int = 1000,
    cv: float = 1.0,
    prompt: LengthDist = CONV_PROMPT,
    output: LengthDist = CONV_OUTPUT,
    seed: int = 0,
    *,
    mix: Sequence[WorkloadClass] | None = None,
    name: str | None = None,
) -> Trace:
    """A trace of n requests; `mix`, when given, replaces prompt/output with weighted classes."""
    rng = np.random.default_rng(seed)
    if arrival == "poisson":
        arrivals = poisson_arrivals(rate, n, rng)
    elif arrival == "gamma":
        arrivals = gamma_arrivals(rate, cv, n, rng)
    else:
        raise ValueError(f"arrival must be 'poisson' or 'gamma', got {arrival!r}")
    if mix:
        weights = np.array([c.weight for c in mix], dtype=float)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("mix weights must be >= 0 with a positive sum")
        labels = rng.choice(len(mix), size=n, p=weights / weights.sum())
        prompts = np.empty(n, dtype=np.int64)
        outputs = np.empty(n, dtype=np.int64)
        for k, cls in enumerate(mix):
            idx = labels == k
            prompts[idx] = cls.prompt.sample(int(idx.sum()), rng)
            outputs[idx] = cls.output.sample(int(idx.sum()), rng)
    else:
        prompts = prompt.sample(n, rng)
        outputs = output.sample(n, rng)
    requests = [
        TraceRequest(id=i, arrival=a, prompt_tokens=p, output_tokens=o)
        for i, (a, p, o) in enumerate(
            zip(arrivals.tolist(), prompts.tolist(), outputs.tolist(), strict=True)
        )
    ]
    label = name or f"synthetic-{arrival}"
    return Trace(name=label, requests=requests, meta={"seed": seed})


# ---------------------------------------------------------------------------- named scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload shape; rate is a default meant to be overridden in experiments."""

    description: str
    rate: float
    cv: float
    prompt: LengthDist = CONV_PROMPT
    output: LengthDist = CONV_OUTPUT
    mix: tuple[WorkloadClass, ...] = ()


SCENARIOS: dict[str, Scenario] = {
    "poisson": Scenario("Poisson arrivals, conversation-like lengths", rate=10.0, cv=1.0),
    "bursty": Scenario("Gamma arrivals (CV 4), conversation-like lengths", rate=10.0, cv=4.0),
    "long-context": Scenario(
        "Poisson arrivals, ~8k-token prompts, short outputs",
        rate=2.0,
        cv=1.0,
        prompt=LengthDist("lognormal", 8000, 0.6, 1000, 32000),
        output=LengthDist("lognormal", 250, 0.8, 1, 2048),
    ),
    "heterogeneous": Scenario(
        "Poisson arrivals; 70% chat, 20% long documents, 10% long generation",
        rate=8.0,
        cv=1.0,
        mix=(
            WorkloadClass(
                0.7, LengthDist("lognormal", 500, 0.8, 1, 8192), LengthDist("lognormal", 150, 0.8)
            ),
            WorkloadClass(
                0.2,
                LengthDist("lognormal", 6000, 0.5, 1000, 32000),
                LengthDist("lognormal", 300, 0.6, 1, 2048),
            ),
            WorkloadClass(
                0.1,
                LengthDist("lognormal", 300, 0.8, 1, 4096),
                LengthDist("lognormal", 1200, 0.4, 64, 8192),
            ),
        ),
    ),
}


def _scaled_mix(
    mix: tuple[WorkloadClass, ...], prompt: float | None, output: float | None
) -> tuple[WorkloadClass, ...]:
    """Scale every class's mean by one factor so the mixture hits the requested mean."""
    total = sum(c.weight for c in mix)

    def factor(target: float | None, get: Callable[[WorkloadClass], LengthDist]) -> float:
        if target is None:
            return 1.0
        return target / (sum(c.weight * get(c).mean for c in mix) / total)

    fp = factor(prompt, lambda c: c.prompt)
    fo = factor(output, lambda c: c.output)
    return tuple(
        replace(
            c,
            prompt=c.prompt.with_mean(c.prompt.mean * fp),
            output=c.output.with_mean(c.output.mean * fo),
        )
        for c in mix
    )


def scenario(
    name: str,
    n: int = 1000,
    seed: int = 0,
    rate: float | None = None,
    cv: float | None = None,
    prompt: float | None = None,
    output: float | None = None,
) -> Trace:
    """A named workload (see SCENARIOS); prompt/output override the mean lengths (tokens)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    sc = SCENARIOS[name]
    cv = sc.cv if cv is None else cv
    mix = _scaled_mix(sc.mix, prompt, output) if sc.mix else None
    return synthetic_trace(
        arrival="poisson" if cv == 1.0 else "gamma",
        rate=sc.rate if rate is None else rate,
        n=n,
        cv=cv,
        prompt=sc.prompt if prompt is None else sc.prompt.with_mean(prompt),
        output=sc.output if output is None else sc.output.with_mean(output),
        seed=seed,
        mix=mix,
        name=f"{SYNTHETIC_PREFIX}{name}",
    )


# ---------------------------------------------------------------------------- spec strings


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError
    return value


_SPEC_KEYS: dict[str, tuple[Callable[[str], object], str]] = {
    "n": (_positive_int, "a positive integer"),
    "seed": (_seed, "a non-negative integer"),
    "rate": (_positive_float, "a positive number (req/s)"),
    "cv": (_positive_float, "a positive number"),
    "prompt": (_positive_float, "a positive number (mean prompt tokens)"),
    "output": (_positive_float, "a positive number (mean output tokens)"),
}


def synthetic_from_spec(spec: str) -> Trace:
    """Parse `synthetic:NAME[,key=value...]`, e.g. `synthetic:bursty,n=2000,rate=20,seed=3`.

    Keys: n, seed, rate, cv (arrival CV), prompt and output (mean lengths).
    `synthetic:sessions,...` is the multi-turn session generator (traces/sessions.py).
    """
    body = spec.strip().removeprefix(SYNTHETIC_PREFIX)
    name, *parts = (p.strip() for p in body.split(","))
    if name == "sessions":  # multi-turn sessions with shared prefixes (own keys)
        from .sessions import sessions_from_spec

        return sessions_from_spec(spec, parts)
    if name not in SCENARIOS:
        raise ValueError(
            f"synthetic spec {spec!r}: unknown scenario {name!r}; "
            f"known: {', '.join(SCENARIOS)}, sessions"
        )
    kwargs: dict[str, object] = {}
    for part in parts:
        if not part:
            continue  # tolerate a trailing comma
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(f"synthetic spec {spec!r}: expected key=value, got {part!r}")
        if key not in _SPEC_KEYS:
            raise ValueError(
                f"synthetic spec {spec!r}: unknown key {key!r}; keys: {', '.join(_SPEC_KEYS)}"
            )
        if key in kwargs:
            raise ValueError(f"synthetic spec {spec!r}: key {key!r} given twice")
        parse, expected = _SPEC_KEYS[key]
        try:
            kwargs[key] = parse(value)
        except ValueError:
            raise ValueError(
                f"synthetic spec {spec!r}: key {key!r} expects {expected}, got {value!r}"
            ) from None
    trace = scenario(name, **kwargs)  # type: ignore[arg-type]
    trace.name = spec.strip()
    return trace
