"""The request record every trace loader and generator produces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TraceRequest:
    """One request of a workload: when it arrives and how much work it carries.

    `arrival` is seconds from the start of the trace. SLO fields are per-request
    overrides (seconds); None means "use the run's defaults".
    """

    id: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    priority: int = 0
    # Content identity for prefix caching: hashes of consecutive `prefix_block`-token blocks of
    # the request's tokens (prompt, then output where known), equal where contents are equal
    # (Mooncake's hash_ids: 512-token blocks of the prompt).
    prefix_hashes: tuple[int, ...] = field(default=())
    prefix_block: int = 512


@dataclass(slots=True)
class Trace:
    """A named, arrival-ordered list of requests.

    `meta` holds loader facts that are not requests (e.g. BurstGPT's count of skipped
    failed rows under "skipped_failed"); transforms carry it over unchanged.
    """

    name: str
    requests: list[TraceRequest]
    meta: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration(self) -> float:
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival - self.requests[0].arrival

    @property
    def rate(self) -> float:
        """Mean arrival rate in requests per second (0 for fewer than two requests)."""
        d = self.duration
        return (len(self.requests) - 1) / d if d > 0 else 0.0
