"""Per-step latency model of one engine, learned online from step telemetry; online estimates of
requests' output lengths."""

from .features import FEATURE_NAMES, N_FEATURES, batch_features, record_features, records_matrix
from .fit import fit_nnls
from .lengths import LengthEstimator
from .model import PerfModel, PerfModelConfig, mape
from .telemetry import StepRecord, TelemetryLog, prefill_attn_work, read_jsonl

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "LengthEstimator",
    "PerfModel",
    "PerfModelConfig",
    "StepRecord",
    "TelemetryLog",
    "batch_features",
    "fit_nnls",
    "mape",
    "prefill_attn_work",
    "read_jsonl",
    "record_features",
    "records_matrix",
]
