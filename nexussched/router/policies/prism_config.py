"""PRISM's knobs: the PrismConfig dataclass (`nexussched tune` searches its numeric fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...perfmodel.model import PerfModelConfig

INF = math.inf
ORDERS = ("edf", "lifo", "cost")


@dataclass
class PrismConfig:
    """PRISM's knobs (`nexussched tune` searches the numeric ones)."""

    tpot_margin: float = 0.85  # pace decodes' predicted step time to this share of the TPOT SLO
    slack: float = 0.5  # s of paced prefill work an engine may run ahead of real time
    queue_limit: float = 1.0  # s of predicted prefill backlog a router-paced engine may hold
    self_paced_queue: float = INF  # the same for an engine that paces prefills itself
    min_share: float = 0.05  # smallest prefill share of an engine with decodes to protect
    # An engine whose decodes keep their TPOT pace while it has queued prefills (an SLO-aware
    # planner) paces itself; one whose decodes slow beyond this x TPOT SLO then (vLLM's default,
    # which runs its whole token budget of prefill next to them) is paced by PRISM.
    self_paced_itl: float = 1.0
    late_binding: bool = True  # hold requests at the router until an engine has room
    # Room is KV room (an engine would start the request now). With hold_for_pace, an engine
    # whose prefills PRISM paces, whose predicted backlog is past the queue limit, or whose decodes
    # are at the TPOT cap also has no room: requests wait at the router for pace. Off by default:
    # holding a request an engine could run costs TTFT where there is nothing to choose (one
    # engine, or all equally loaded); on, it protects TPOT on vLLM-default engines in overload.
    hold_for_pace: bool = False
    order: str = "edf"  # held-queue order within a priority: edf | lifo | cost
    ttft_margin: float = 1.0  # scale on predicted TTFT in feasibility tests (>1: cautious)
    kv_cap: float = 0.95  # do not send work that would push predicted KV use past this
    scan: int = 8  # held requests one pull examines
    rebind: bool = True
    max_moves: int = 1  # re-bindings per request
    rebind_gain: float = 0.3  # s of predicted TTFT a move must save
    # Hysteresis on moves that leave cached context behind: a move must also save this x the
    # compute at its destination of the prompt blocks cached where it is queued but not there. That compute delays every request after it there, and a session's
    # later turns follow its context; a gain for one request bought with more work for all is a
    # loss under load (0: moves weigh only the moved request's own TTFT).
    move_cost: float = 10.0
    tick_interval: float = 0.05  # s between ticks (re-binding, resync with engine state)
    shed: bool = False  # refuse requests no engine can serve within their TTFT SLO
    retry_after: float = 1.0  # s, floor of the Retry-After hint of a refused request
    # Several router replicas: a random tie-break of up to this many seconds of predicted TTFT, so
    # replicas deciding at once on the same shared state spread instead of herding (0: off).
    jitter: float = 0.0
    seed: int = 0
    # Bounded unfairness: a late request held longer than this x its TTFT SLO is no longer served
    # only from spare room but sent on in arrival order, each to the engine that would serve it
    # soonest, room or not (inf: never)
    age_limit: float = 8.0
    decode_sample: int = 16  # learn from 1 in this many decode-only steps (all others are kept)
    # Predict each engine's prefix-cache hit for a request from a router-side index of the prompt
    # blocks sent there (sized by the engine's num_gpu_blocks) and fold it into the predicted
    # prefill time: only the uncached tail is computed, attending to the cached prefix.
    prefix_aware: bool = True
    # Among engines predicted to meet a request's TTFT SLO with `slack` to spare, send it to the
    # one predicted to hold most of its prompt (least prefill: capacity left for the requests
    # after it, and a session's later turns stay with its cached context), ties by predicted
    # TTFT; where none would meet it, to the one holding most (a late request costs least there).
    # Off: always the soonest.
    prefix_affinity: bool = True
    # A request that no engine could prefill within its TTFT SLO even with nothing queued ahead
    # (a prompt too long for the SLO), bound for an engine PRISM paces (see self_paced_itl; vLLM's
    # default batching is), waits at the router with the late ones and is served only from spare
    # room (or after age_limit), so it does not delay the requests that can still make theirs.
    # Off: it goes to the engine predicted to serve it soonest, as any request.
    defer_hopeless: bool = True
    # With prefix_affinity, where no engine is predicted to meet a request's TTFT from its
    # cached prefix, it goes to the engine with the lowest predicted TTFT + place_cost x the
    # compute there of the prompt blocks another engine holds (0: the soonest): recomputing a
    # cached prefix elsewhere is work every later request there waits behind, and moves the
    # session's context away.
    place_cost: float = 10.0
    # Where engines publish KV events (vLLM's BlockStored / BlockRemoved; engine-sim and the
    # simulator do), the index follows them: exact evictions instead of an LRU guess.
    kv_events: bool = True
    perf: PerfModelConfig = field(
        default_factory=lambda: PerfModelConfig(
            window=2048, half_life=1024, drift_ratio=1.5, drift_window=200
        )
    )

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"prism: order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name in ("tpot_margin", "ttft_margin", "kv_cap", "tick_interval", "self_paced_itl"):
            if not getattr(self, name) > 0:
                raise ValueError(f"prism: {name} must be positive, got {getattr(self, name)!r}")
        if self.slack < 0 or self.queue_limit < 0 or self.self_paced_queue < 0:
            raise ValueError("prism: slack, queue_limit and self_paced_queue must be >= 0")
        if not 0 <= self.min_share < 1:
            raise ValueError(f"prism: min_share must be in [0, 1), got {self.min_share!r}")
        if not self.age_limit > 0:
            raise ValueError(f"prism: age_limit must be positive, got {self.age_limit!r}")
        if self.move_cost < 0 or self.place_cost < 0 or self.jitter < 0:
            raise ValueError("prism: move_cost, place_cost and jitter must be >= 0")
        if self.max_moves < 0 or self.scan < 1:
            raise ValueError("prism: max_moves must be >= 0 and scan >= 1")
