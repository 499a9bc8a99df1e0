"""Hardware profiles: the simulator's ground truth for one engine's step time.

No scheduler may read these: schedulers see only step telemetry and learn a perf model from it.

Step time of a batch for a dense decoder (default: a Llama-3-8B-shaped model, bf16):
  t = overhead + per_seq * seqs
      + smax(T_weights, T_gemm)          # memory-bound at small batches, compute-bound past the knee
      + T_kv                             # reading every decode's KV cache
      + T_attn                           # quadratic prefill attention
  times a lognormal noise with rare stragglers. smax is a soft maximum (p-norm), which is what
  measured roofline curves look like near the knee; a linear model can only approximate it.

Peak numbers are vendor datasheet figures (dense bf16 tensor TFLOPS, HBM/GDDR bandwidth):
  NVIDIA A100 80GB SXM: 312 TFLOPS, 2,039 GB/s (A100 datasheet, 2021)
  NVIDIA H100 SXM5 80GB: 989 TFLOPS, 3,350 GB/s (H100 datasheet, 2023)
  NVIDIA L4 24GB: 121 TFLOPS, 300 GB/s (L4 datasheet, 2023)
Achieved fractions (MFU ~0.5-0.6 for large GEMMs, ~0.7-0.8 of memory bandwidth) follow the
operator profiles published with Vidur (Agrawal et al., MLSys 2024) and Sarathi-Serve (OSDI 2024),
which put an 8B model's A100 prefill near 0.1 ms/token and its batch-1 decode near 10 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelShape:
    name: str = "llama-3-8b"
    params: float = 8.03e9
    layers: int = 32
    hidden: int = 4096
    kv_heads: int = 8
    head_dim: int = 128
    bytes_per_param: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    tflops: float  # dense bf16 peak
    mem_bw_gbs: float
    mem_gib: float
    mfu: float = 0.65
    attn_mfu: float = 0.35
    mbu: float = 0.8
    overhead_s: float = 0.0025  # scheduler, sampler, launch: per step
    per_seq_s: float = 25e-6  # per sequence in the batch (sampling, bookkeeping)
    knee_p: float = 4.0  # sharpness of the memory/compute soft maximum
    noise_cv: float = 0.03
    straggler_prob: float = 0.004
    straggler_factor: float = 1.4
    gpu_mem_util: float = 0.9
    activation_gib: float = 2.0
    model: ModelShape = ModelShape()
    # vLLM V1's defaults for the OpenAI server (EngineArgs batch defaults): 8192 tokens and 1024
    # seqs on >= 70 GiB devices other than A100 (excluded after vLLM PR #17885), else 2048 and 256.
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    speed: float = 1.0  # multiplier on step time (slowdown experiments)

    def kv_tokens(self) -> int:
        free = (
            self.mem_gib * self.gpu_mem_util - self.model.weight_bytes / 2**30 - self.activation_gib
        )
        return max(0, int(free * 2**30 / self.model.kv_bytes_per_token))

    def coefficients(self) -> StepCost:
        m = self.model
        bw = self.mem_bw_gbs * 1e9 * self.mbu
        fl = self.tflops * 1e12
        return StepCost(
            overhead=self.overhead_s,
            per_seq=self.per_seq_s,
            weights=m.weight_bytes / bw,
            per_token=2.0 * m.params / (fl * self.mfu),
            per_kv_token=m.kv_bytes_per_token / bw,
            per_attn=4.0 * m.layers * m.hidden / (fl * self.attn_mfu),
            knee_p=self.knee_p,
            speed=self.speed,
        )

    def slowed(self, factor: float) -> HardwareProfile:
        return replace(self, speed=self.speed * factor)


@dataclass(frozen=True)
class StepCost:
    """Precomputed terms of the ground-truth step time (seconds)."""

    overhead: float
    per_seq: float
    weights: float
    per_token: float
    per_kv_token: float
    per_attn: float
    knee_p: float
    speed: float

    def time(
        self,
        prefill_tokens: int,
        prefill_attn: float,
        prefill_ctx_read: int,
        num_decodes: int,
        decode_ctx_sum: int,
        num_prefills: int,
    ) -> float:
        """Noise-free step time."""
        tokens = prefill_tokens + num_decodes
        if tokens <= 0:
            return 0.0
        p = self.knee_p
        w = self.weights
        g = self.per_token * tokens
        body = (w**p + g**p) ** (1.0 / p)
        t = (
            self.overhead
            + self.per_seq * (num_decodes + num_prefills)
            + body
            + self.per_kv_token * (decode_ctx_sum + prefill_ctx_read)
            + self.per_attn * prefill_attn
        )
        return t * self.speed

    def decode_time(self, n: int, ctx_sum: int) -> float:
        """Noise-free step time of a decode-only batch (hot path of the simulator)."""
        p = self.knee_p
        g = self.per_token * n
        body = (self.weights**p + g**p) ** (1.0 / p)
        return (self.overhead + self.per_seq * n + body + self.per_kv_token * ctx_sum) * self.speed


PRESETS: dict[str, HardwareProfile] = {
    "a100": HardwareProfile(name="a100", tflops=312.0, mem_bw_gbs=2039.0, mem_gib=80.0),
    "h100": HardwareProfile(
        name="h100",
        tflops=989.0,
        mem_bw_gbs=3350.0,
        mem_gib=80.0,
        mfu=0.5,
        attn_mfu=0.3,
        overhead_s=0.0022,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
    ),
    "l4": HardwareProfile(
        name="l4",
        tflops=121.0,
        mem_bw_gbs=300.0,
        mem_gib=24.0,
        mbu=0.85,
        overhead_s=0.003,
        activation_gib=1.0,
    ),
}


def get_profile(name: str) -> HardwareProfile:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown hardware profile {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None


def parse_cluster(spec: str) -> list[HardwareProfile]:
    """'a100:4,h100:2,l4:2' -> eight profiles in that order."""
    out: list[HardwareProfile] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        n = 1
        if count:
            try:
                n = int(count)
            except ValueError:
                raise ValueError(
                    f"bad cluster spec {spec!r}: count {count!r} is not an integer"
                ) from None
        if n <= 0:
            raise ValueError(f"bad cluster spec {spec!r}: count must be positive")
        out.extend([get_profile(name)] * n)
    if not out:
        raise ValueError(f"bad cluster spec {spec!r}: no engines")
    return out


def lognormal_sigma(cv: float) -> float:
    return math.sqrt(math.log(1.0 + cv * cv))
