"""Engine views for simulated routing policies: what the live router knows, or the oracle ablation.

ScrapedView (the default, `--view live`) holds exactly the information contract of
router/policies/view.py: the engine's vLLM gauges as of its last scrape (taken every
`scrape_period` seconds of simulated time, each engine on its own phase as the live router's
per-backend loops are), its cache_config_info, and the router's own counts. OracleView
(`--view oracle`) reads the engine's exact state at every access and adds ORACLE_ATTRS.

The cluster simulator keeps both kinds current: `count()` on dispatch and finish, and
`ScrapeClock.advance(t)` before it handles any event at time t. Engine state changes only at
events, so the state when an event at t arrives is the state at every scrape instant since the
previous event: the snapshot is exact without a timer (only a macro step's gradual KV growth is
seen as of its start).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..router.policies.view import SCRAPE_PERIOD, VIEW_ATTRS
from .engine import EngineSim

VIEWS = ("live", "oracle")
_PHASE = 0.6180339887498949  # golden-ratio spacing of the engines' scrape phases


class _Counts:
    """The router's own counts for one engine (shared by both view kinds)."""

    __slots__ = ()

    def _init_static(self, engine: EngineSim) -> None:
        """What the router knows of an engine without scraping its gauges: its name, health,
        cache_config_info, and its own (zeroed) counts."""
        self.name = engine.name
        self.healthy = True
        self.block_size = engine.block_size
        self.num_gpu_blocks = engine.total_blocks
        self.inflight = 0
        self.inflight_prompt_tokens = 0
        self.inflight_max_tokens = 0

    def count(self, prompt: int, max_tokens: int, sign: int) -> None:
        self.inflight += sign
        self.inflight_prompt_tokens += sign * prompt
        self.inflight_max_tokens += sign * max_tokens


class ScrapedView(_Counts):
    """An engine as the live router sees it: the contract's attributes and nothing else."""

    __slots__ = (*VIEW_ATTRS, "_engine")  # the contract's attributes, so the two cannot drift

    def __init__(self, engine: EngineSim) -> None:
        self._engine = engine
        self._init_static(engine)
        self.num_running = 0
        self.num_waiting = 0
        self.kv_usage = 0.0
        self.last_scrape = -math.inf  # never scraped yet

    def scrape(self, at: float) -> None:
        """Copy the engine's gauges as a /metrics scrape at time `at` would."""
        e = self._engine
        self.num_running = len(e.running)
        self.num_waiting = len(e.waiting)
        self.kv_usage = e.kv_usage
        self.last_scrape = at


class OracleView(_Counts):
    """The engine's exact, instant state (an ablation: no live router has it)."""

    __slots__ = (
        "name",
        "healthy",
        "block_size",
        "num_gpu_blocks",
        "inflight",
        "inflight_prompt_tokens",
        "inflight_max_tokens",
        "_engine",
        "_clock",
    )

    def __init__(self, engine: EngineSim, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock
        self._init_static(engine)

    def scrape(self, at: float) -> None:
        return None  # always current

    @property
    def num_running(self) -> int:
        return len(self._engine.running)

    @property
    def num_waiting(self) -> int:
        return len(self._engine.waiting)

    @property
    def kv_usage(self) -> float:
        return self._engine.kv_usage

    @property
    def last_scrape(self) -> float:
        return self._clock()

    # ---- oracle-only (ORACLE_ATTRS) ------------------------------------------------------------
    def queued_prefill_tokens(self) -> int:
        return self._engine.queued_prefill_tokens()

    def decode_ctx_sum(self) -> int:
        return self._engine.decode_ctx_sum()

    @property
    def free_blocks(self) -> int:
        return self._engine.free_blocks

    @property
    def max_num_batched_tokens(self) -> int:
        return self._engine.max_num_batched_tokens

    def cached_prefix_tokens(self, hashes: Sequence[int]) -> int:
        """Prompt tokens the engine's prefix cache holds now for these block hashes."""
        e = self._engine
        if e.cache is None or not hashes:
            return 0
        return e.cache.match(hashes, len(hashes))[0] * e.block_size


class ScrapeClock:
    """When each engine's next scrape falls; `advance(t)` takes every scrape due by `t`."""

    def __init__(self, views: Sequence[ScrapedView | OracleView], period: float) -> None:
        if not period >= 0 or not math.isfinite(period):
            raise ValueError(f"scrape period must be >= 0 seconds, got {period!r}")
        self.views = views
        self.period = period
        n = len(views)
        # first scrape at a per-engine phase in [0, period)
        self.next = [period * ((i * _PHASE) % 1.0) for i in range(n)]
        self.due = min(self.next) if n else math.inf

    def advance(self, t: float) -> None:
        if t < self.due:
            return
        p = self.period
        if p == 0.0:  # a scrape before every event: the gauges are always current
            for v in self.views:
                v.scrape(t)
            return
        nxt = self.next
        for i, v in enumerate(self.views):
            b = nxt[i]
            if b <= t:
                b += math.floor((t - b) / p) * p  # the last scrape instant at or before t
                v.scrape(b)
                nxt[i] = b + p
        self.due = min(nxt)


def make_views(
    engines: Sequence[EngineSim], kind: str, clock: Callable[[], float]
) -> list[ScrapedView] | list[OracleView]:
    if kind == "live":
        return [ScrapedView(e) for e in engines]
    if kind == "oracle":
        return [OracleView(e, clock) for e in engines]
    raise ValueError(f"unknown view {kind!r}; known: {', '.join(VIEWS)}")


__all__ = ["SCRAPE_PERIOD", "VIEWS", "OracleView", "ScrapeClock", "ScrapedView", "make_views"]
