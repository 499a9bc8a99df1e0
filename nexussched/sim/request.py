"""A request's life inside the simulated cluster."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..engine_sched.plan import SeqState

# Why a request failed (`SimRequest.failure`); a request with neither a finish nor a failure when the
# simulation ends is *stranded* (a liveness bug, reported as such).
REJECTED = "rejected"  # refused at admission (no engine can hold it, a full queue, no engine up)
SHED = "shed"  # refused by SLO admission control (PRISM's shed)
TIMEOUT = "timeout"  # its client gave up waiting for the first token and disconnected
EXPIRED = "expired"  # a scheduler queue dropped it after its TTL (FastDeploy's scheduler_ttl)

MAX_TOKENS_DEFAULT = "cap:4096"
# Test-only request field (in vllm_xargs) that makes engine-sim stop at a trace's recorded length;
# routers forward it unread, so they still see only the declared max_tokens.
OUTPUT_TOKENS_XARG = "nexussched_output_tokens"


def parse_max_tokens(spec: str) -> int | None:
    """`exact` (clients declare each request's true length: None) or `cap:N` (every client asks
    for N tokens; longer outputs are cut at N, as vLLM stops at max_tokens)."""
    s = spec.strip().lower()
    if s == "exact":
        return None
    if s.startswith("cap:"):
        try:
            n = int(s[4:])
        except ValueError:
            n = 0
        if n >= 1:
            return n
    raise ValueError(f"--max-tokens must be 'exact' or 'cap:N' with N >= 1, got {spec!r}")


def declare(output: int, cap: int | None) -> tuple[int, int]:
    """(true output length, declared max_tokens) of a trace request under a max-tokens mode."""
    output = max(1, output)
    if cap is None:
        return output, output
    return min(output, cap), cap


class SimRequest:
    """Mutable per-request state; slots keep the hot loops cheap."""

    __slots__ = (
        "_ss",
        "id",
        "arrival",
        "prompt",
        "output",
        "max_tokens",
        "slo_ttft",
        "slo_tpot",
        "priority",
        "computed",
        "generated",
        "blocks",
        "first_token",
        "finish",
        "last_token",
        "max_itl",
        "preemptions",
        "enqueue_time",
        "engine_name",
        "moves",
        "dispatch_time",
        "tag",
        "engine_idx",
        "failure",
        "error",
        "hashes",
        "held",
        "sealed",
        "cached",
        "own_content",
    )

    def __init__(
        self,
        id: int,
        arrival: float,
        prompt: int,
        output: int,
        slo_ttft: float,
        slo_tpot: float,
        priority: int = 0,
        max_tokens: int | None = None,
    ) -> None:
        self.id = id
        self.arrival = arrival
        self.prompt = max(1, prompt)
        # `output` is how long the output really is: the engine's physics (where it stops), read
        # by no policy; `max_tokens` is what the client declared, all a router or planner knows.
        self.output = max(1, output)
        self.max_tokens = self.output if max_tokens is None else max(1, max_tokens)
        self.slo_ttft = slo_ttft
        self.slo_tpot = slo_tpot
        self.priority = priority
        self._ss: SeqState | None = None  # seq_state()'s object
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.first_token = math.nan
        self.finish = math.nan
        self.last_token = math.nan
        self.max_itl = 0.0
        self.preemptions = 0
        self.enqueue_time = math.nan
        self.dispatch_time = math.nan
        self.engine_name = ""
        self.moves = 0
        self.tag: object = None  # free slot for a cluster mode's bookkeeping
        self.engine_idx = -1  # engine it is queued or running at (-1: at the router, or none)
        self.failure: str | None = None  # REJECTED | SHED | TIMEOUT | EXPIRED once it failed
        self.error: str | None = None  # the failure's message
        # prefix caching: hashes of the request's full blocks (prompt, then output where the
        # trace knows it), the cached blocks it references (in order), how many of its leading
        # blocks were offered to the cache, and its prompt tokens served from cache at admission
        self.hashes: Sequence[int] = ()
        self.held: list[int] = []
        self.sealed = 0
        self.cached = 0
        # its hashes name content of its own (none the trace shares): no other request can hit
        # its blocks, so they are offered to the cache when it frees them, not as they fill
        self.own_content = False

    def seq_state(self, running: bool) -> SeqState:
        """The planner's view of this request, one object per request refreshed in place: it
        is asked for every sequence every planned step, and planners keep none between steps."""
        ft = self.first_token
        s = self._ss
        if s is not None:
            s.computed = self.computed
            s.generated = self.generated
            s.running = running
            s.first_token_time = None if ft != ft else ft
            return s
        # Positional (SeqState's field order): keyword construction is 2-3x slower.
        s = self._ss = SeqState(
            self.id,
            self.prompt,
            self.computed,
            self.generated,
            self.max_tokens,
            self.arrival,
            running,
            self.slo_ttft,
            self.slo_tpot,
            self.priority,
            None if ft != ft else ft,
        )
        return s

    @property
    def ended(self) -> bool:
        """Finished or failed: nothing more will happen to it."""
        return self.failure is not None or self.finish == self.finish

    def fail(self, kind: str, message: str) -> None:
        self.failure = kind
        self.error = message
        self.engine_idx = -1

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (vLLM benchmark's TPOT); 0 for 1 token."""
        if self.generated <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.generated - 1)

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival
