"""The report's scenario matrix and settings: the scenarios, the routers and engine policies
compared, the baseline and ours, and the run options (`nexussched report`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..router.knobs import Knobs
from .information import Information
from .replay import DEFAULT_CLIENT_TIMEOUT

BASELINE = ("round_robin", "vllm_default")
OURS = ("prism", "lens")
ROUTERS = ("round_robin", "least_load", "local", "global", "splitwise", "llmd_weighted",
           "sglang_cache_aware", "prism")  # fmt: skip
ENGINES = ("vllm_default", "lens")
TARGET_LO, TARGET_HI, TARGET = 0.5, 0.7, 0.6  # the operating point: rr + vllm attains 50-70%
GOODPUT = 0.9
STEP = 1.5  # goodput search: rate factor per bracketing step from the operating point


@dataclass(frozen=True)
class Scenario:
    name: str
    trace: str  # a trace name, path or synthetic spec
    requests: int  # the first N requests of the trace
    cluster: str  # hardware, e.g. "a100:8" or "h100:2,a100:4,l4:2"
    slo_ttft: float  # s
    slo_tpot: float  # s
    start: float  # first guess of the operating point's rate scale
    description: str
    policy_kwargs: dict = field(default_factory=dict)  # per routing policy, chosen by the report
    client_timeout: float | None = DEFAULT_CLIENT_TIMEOUT  # s to first token; None: wait forever
    full: int | None = None  # the slice of `report --full` (None: `requests`)


# Slices: the first N requests of each trace. Shorter slices flatter every policy (a queue that
# grows has less time to show; at 2,000 instead of 3,000 requests prism+lens's goodput on
# heterogeneous read 31% higher), so the Azure-based ones stay long. Mooncake's long prompts cost
# ~10x an Azure request to simulate: its default slice is 400 requests, which keeps the matrix
# under 3 minutes on 2 cores; `report --full` replays the 1,500 of earlier reports (a run costs
# in proportion to its requests).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("azure-conv", "azure-conv", 3000, "a100:8", 2.0, 0.1, 15.6,
             "Azure LLM inference trace 2023, conversation (1.2k-token prompts, 211 out)"),
    Scenario("azure-code", "azure-code", 2000, "a100:8", 2.0, 0.1, 3.5,
             "Azure LLM inference trace 2023, code (2k-token prompts, 28 out; arrival CV 13)"),
    Scenario("mooncake-conv", "mooncake-conv", 400, "a100:8", 10.0, 0.1, 1.0,
             "Mooncake conversation trace, long context (12k-token prompts, p99 85k); shared "
             "prefixes from its hash_ids", full=1500),
    Scenario("bursty", "synthetic:bursty,n=2000,seed=1", 2000, "a100:8", 2.0, 0.1, 8.4,
             "synthetic, Gamma arrivals with CV 4, conversation-like lengths"),
    Scenario("heterogeneous", "azure-conv", 3000, "h100:2,a100:4,l4:2", 2.0, 0.1, 15.6,
             "azure-conv on 2 fast (h100) + 4 medium (a100) + 2 slow (l4) engines"),
    Scenario("sessions", "synthetic:sessions,n=1200,seed=2", 1200, "a100:4", 2.0, 0.1, 1.9,
             "synthetic multi-turn chats and agent loops over shared system prompts, each turn "
             "extending the last (prefix-heavy: an infinite shared cache serves 90% of prompt "
             "tokens)"),
)  # fmt: skip


@dataclass
class ReportConfig:
    out: Path
    scenarios: tuple[Scenario, ...] = SCENARIOS
    routers: tuple[str, ...] = ROUTERS
    engines: tuple[str, ...] = ENGINES
    requests_scale: float = 1.0  # multiplies every scenario's request count
    full: bool = False  # the larger slices (Scenario.full)
    step: float = STEP
    bracket: int = 10  # bracketing steps at most (op / 16 .. op x 8)
    resolution: float = 1.12  # no more probes once passing and failing rates are this close
    bisect: int = 4  # goodput refinement steps at most (interpolated, see _next_probe)
    search: int = 8  # operating-point search runs at most
    workers: int = 0  # 0: one per CPU
    seed: int = 0
    decision_engines: int = 64
    decisions: int = 20000
    knobs: Knobs = field(default_factory=Knobs)  # --policy-config / --policy-arg
    traces_dir: str | None = None  # --traces-dir (None: the usual lookup, see load_trace)
    info: Information = field(default_factory=Information)  # what the policies may know
    information_scenario: str | None = "heterogeneous"  # value-of-information table (None: off)
    progress: Callable[[str], None] | None = None
    skipped: list[str] = field(default_factory=list)
