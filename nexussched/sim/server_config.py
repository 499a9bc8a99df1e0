"""engine-sim's settings (`nexussched engine-sim` flags), checked by validate()."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .hardware import get_profile


@dataclass
class ServerConfig:
    profile: str = "a100"
    models: tuple[str, ...] = ("sim-llama-3-8b",)
    name: str = ""  # engine name in telemetry/metrics (default: profile-port)
    time_scale: float = 1.0  # wall seconds per simulated second; 0 = fast mode
    seed: int = 0
    engine_policy: str = "vllm_default"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    num_blocks: int | None = None
    max_model_len: int = 131072
    enable_prefix_caching: bool = (
        True  # vLLM V1's automatic prefix caching (prompt and answer blocks)
    )
    default_max_tokens: int = 16  # OpenAI's completions default
    eos_mean: float = 0.0  # mean natural output length without ignore_eos; 0: never stop early
    slo_ttft: float = 2.0  # defaults for requests stating none (seconds)
    slo_tpot: float = 0.1
    telemetry_out: str | None = None
    telemetry_keep: int = 100_000  # records kept for GET /telemetry
    # disaggregated prefill (vLLM's kv_transfer_params): a decode request's prompt KV arrives
    # from the prefill engine over a link of this many GB/s before it can run
    kv_link_gbs: float = 25.0
    max_body_bytes: int = 16 * 2**20
    # the telemetry plane: publish step records, load snapshots and a fitted model to Redis, as
    # the vLLM plug-in does (engine_sched/publish.py); `addr` is host:port, set by run_server
    redis_url: str | None = None
    topic: str = "default"
    addr: str | None = None

    def validate(self) -> ServerConfig:
        get_profile(self.profile)
        if not (self.time_scale >= 0 and math.isfinite(self.time_scale)):
            raise ValueError(f"--time-scale must be >= 0, got {self.time_scale}")
        if not self.models or not all(self.models):
            raise ValueError("at least one non-empty --model name is needed")
        if self.default_max_tokens <= 0 or self.max_model_len <= 0 or self.telemetry_keep <= 0:
            raise ValueError(
                "--default-max-tokens, --max-model-len and the telemetry buffer must be positive"
            )
        if self.eos_mean < 0:
            raise ValueError("--eos-mean must be >= 0")
        return self
