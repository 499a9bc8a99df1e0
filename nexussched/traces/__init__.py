"""Request traces: loaders for public traces, synthetic generators, transforms, statistics.

Imports nothing else from nexussched (stdlib and numpy only).
"""

from .errors import TraceError
from .loaders import (
    KNOWN_TRACES,
    TRACES_DIR_ENV,
    default_traces_dir,
    detect_format,
    load_azure2023,
    load_azure2024,
    load_burstgpt,
    load_mooncake,
    load_path,
    load_trace,
)
from .stats import describe
from .synthetic import (
    SCENARIOS,
    LengthDist,
    WorkloadClass,
    gamma_arrivals,
    poisson_arrivals,
    scenario,
    synthetic_from_spec,
    synthetic_trace,
)
from .transform import head, scale_rate, slice_trace, time_window, with_slo
from .types import Trace, TraceRequest

__all__ = [
    "KNOWN_TRACES",
    "SCENARIOS",
    "TRACES_DIR_ENV",
    "LengthDist",
    "Trace",
    "TraceError",
    "TraceRequest",
    "WorkloadClass",
    "default_traces_dir",
    "describe",
    "detect_format",
    "gamma_arrivals",
    "head",
    "load_azure2023",
    "load_azure2024",
    "load_burstgpt",
    "load_mooncake",
    "load_path",
    "load_trace",
    "poisson_arrivals",
    "scale_rate",
    "scenario",
    "slice_trace",
    "synthetic_from_spec",
    "synthetic_trace",
    "time_window",
    "with_slo",
]
