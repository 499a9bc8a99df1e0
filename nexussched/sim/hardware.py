"""Hardware profiles: the simulator's ground truth for one engine's step time.

No scheduler may read these: schedulers see only step telemetry and learn a perf model from it.
The truth is deliberately *not* written in the perf model's terms; it is built from measurements
and from the mechanisms real engines (vLLM V1, Llama-3-8B shape, bf16, one GPU) show:

- **Linear layers, measured.** Per-layer operator times from Vidur's published profiles (A100:
  Llama-3-8B as measured; H100: Llama-2-7B converted by weight ratio; `sim/profiles.py`, the README
  in `nexussched/data/profiles/`), read as a staircase of the batch's token count, so GEMM tile
  steps stay in.
- **CUDA-graph padding.** vLLM V1 pads every batch of at most `max_graph` tokens up to its next
  capture size (1, 2, 4, multiples of 8 below 256, then of 16; `max_graph = min(2*max_num_seqs,
  512)`, vLLM's default capture list) and runs the padded size.
- **lm_head** on one row per sequence (vLLM computes logits only where it samples): a roofline of
  its 128256x4096 weight read and its FLOPs.
- **Decode attention** reads each sequence's KV cache; achieved bandwidth rises with the bytes in
  flight (few, short sequences cannot fill the GPU), so its cost is concave in the context sum,
  not linear.
- **Prefill attention** as FlashAttention runs it: 128x128 tiles (causal diagonal tiles computed
  whole), thread blocks (query tile x head) scheduled in waves over the SMs, so cost moves in wave
  steps; small grids (a short chunk over a long context) split the KV across SMs instead.
- **CPU overhead** that vLLM V1 partly overlaps with the GPU (its scheduler, input preparation and
  output processing run while the previous step computes): a small serial part, plus a per-step
  and per-sequence part that only shows where it exceeds the GPU time of the step.
- Noise: lognormal per step with rare stragglers (applied by the engine).

Vendor datasheet peaks (dense bf16 tensor TFLOPS, memory bandwidth, SM count):
  NVIDIA A100 80GB SXM: 312 TFLOPS, 2,039 GB/s, 108 SMs (A100 datasheet, 2021)
  NVIDIA H100 SXM5 80GB: 989 TFLOPS, 3,350 GB/s, 132 SMs (H100 datasheet, 2023)
  NVIDIA L4 24GB: 121 TFLOPS, 300 GB/s, 58 SMs (L4 datasheet, 2023)
Achieved fractions for the modelled kernels (FlashAttention ~0.6-0.7 of peak at head dim 128:
Dao 2023, Shah et al. 2024; ~0.85-0.9 of HBM bandwidth for long KV reads) are modelling
assumptions, checked against the canonical references in tests/test_hardware.py. The L4 has no
public measured profile: its linear layers are a roofline (`HardwareProfile.source` says so).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, replace

from .profiles import LLAMA2_7B, LLAMA3_8B, load_profile, staircase

FA_TILE = 128  # FlashAttention query and key tile (rows)


@dataclass(frozen=True)
class ModelShape:
    name: str = "llama-3-8b"
    params: float = 8.03e9
    layers: int = 32
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    vocab: int = 128256
    bytes_per_param: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param

    @property
    def layer_params(self) -> float:
        """Weights of one decoder layer's linear layers (what the profiles measure)."""
        h, d = self.hidden, self.head_dim
        return h * (self.heads + 2 * self.kv_heads) * d + h * h + 3 * h * self.intermediate


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    tflops: float  # dense bf16 peak
    mem_bw_gbs: float
    mem_gib: float
    sms: int = 108
    # Where the linear layers come from: "measured:<csv>", "converted:<csv>" (Llama-2-7B profile
    # scaled to this model by weight ratio) or "roofline" (no public measurement).
    source: str = "roofline"
    # roofline linear layers (used only when source is "roofline")
    mfu: float = 0.6
    mbu: float = 0.85
    knee_p: float = 4.0
    # kernels the profiles do not cover
    fa_eff: float = 0.7  # FlashAttention tile throughput, fraction of peak
    kv_bw_eff: float = 0.87  # decode attention's bandwidth fraction with plenty of KV in flight
    kv_half_tokens: float = 2048.0  # KV tokens per layer at which its bandwidth is ~0.7 of that
    attn_fixed_s: float = 4e-6  # per layer: attention kernel launch and metadata
    lm_mbu: float = 0.85
    lm_mfu: float = 0.6
    gpu_per_seq_s: float = 1.5e-6  # sampler and KV-slot writes per sequence
    # CPU: serial part, and the part vLLM V1 overlaps with the GPU (shows only beyond GPU time)
    cpu_serial_s: float = 0.00015
    cpu_serial_per_seq_s: float = 2e-6
    cpu_overlap_s: float = 0.0015
    cpu_overlap_per_seq_s: float = 30e-6
    cpu_overlap_per_token_s: float = 0.1e-6
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

    def step_model(self) -> StepModel:
        """The noise-free step-time function of this device (cached: tables are built once)."""
        return _step_model(self)

    def slowed(self, factor: float) -> HardwareProfile:
        return replace(self, speed=self.speed * factor)


def graph_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default CUDA-graph capture sizes."""
    top = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, top + 1, 16))
    return [s for s in sizes if s <= top]


TABLE_TOKENS = 32768  # dense table size; larger batches extrapolate linearly


def _linear_table_ms(p: HardwareProfile) -> tuple[list[int], list[float]]:
    """(token counts, whole-model linear-layer ms) before graph padding."""
    m = p.model
    kind, _, csv_name = p.source.partition(":")
    if kind in ("measured", "converted"):
        prof = load_profile(csv_name)
        if kind == "converted":
            prof = prof.converted(LLAMA2_7B, LLAMA3_8B)
        per_layer = prof.layer_ms()
        return list(prof.tokens), [
            m.layers * v + e for v, e in zip(per_layer, prof.emb, strict=True)
        ]
    if kind != "roofline":
        raise ValueError(f"unknown hardware source {p.source!r}")
    # Roofline of the layers' weights read vs their FLOPs, soft maximum at the knee; GEMM M-tiles
    # of 64 quantise the compute side.
    w = m.layers * m.layer_params
    t_mem = w * m.bytes_per_param / (p.mem_bw_gbs * 1e9 * p.mbu)
    grid = [1, 2, 4] + list(range(8, 1024, 8)) + list(range(1024, TABLE_TOKENS + 1, 64))
    out = []
    for t in grid:
        t_fl = 2.0 * w * (-(-t // 64) * 64) / (p.tflops * 1e12 * p.mfu)
        out.append((t_mem**p.knee_p + t_fl**p.knee_p) ** (1.0 / p.knee_p) * 1e3)
    return grid, out


@functools.lru_cache(maxsize=64)
def _step_model(p: HardwareProfile) -> StepModel:
    tokens, ms = _linear_table_ms(p)
    stair = staircase(tuple(tokens), ms, TABLE_TOKENS)
    sizes = graph_sizes(p.max_num_seqs)
    lin = [v * 1e-3 for v in stair]
    for t in range(1, sizes[-1] + 1):
        lin[t] = stair[sizes[bisect.bisect_left(sizes, t)]] * 1e-3
    m = p.model
    peak = p.tflops * 1e12
    bw = p.mem_bw_gbs * 1e9
    kv_layer = m.kv_bytes_per_token / m.layers
    tile_flops = 4.0 * FA_TILE * FA_TILE * m.head_dim
    return StepModel(
        linear=lin,
        lm_mem=m.vocab * m.hidden * m.bytes_per_param / (bw * p.lm_mbu),
        lm_per_seq=2.0 * m.vocab * m.hidden / (peak * p.lm_mfu),
        attn_fixed=p.attn_fixed_s * m.layers,
        kv_coef=m.layers * kv_layer / (bw * p.kv_bw_eff),
        kv_half=p.kv_half_tokens,
        tile_s=m.layers * tile_flops / (peak / p.sms * p.fa_eff),
        sms=p.sms,
        heads=m.heads,
        gpu_per_seq=p.gpu_per_seq_s,
        cpu_serial=p.cpu_serial_s,
        cpu_serial_seq=p.cpu_serial_per_seq_s,
        cpu_overlap=p.cpu_overlap_s,
        cpu_overlap_seq=p.cpu_overlap_per_seq_s,
        cpu_overlap_tok=p.cpu_overlap_per_token_s,
        speed=p.speed,
    )


@dataclass(frozen=True)
class StepModel:
    """Noise-free step time (seconds) of one batch on one device."""

    linear: list[float]  # whole-model linear layers at T tokens, graph padding applied
    lm_mem: float  # lm_head weight read
    lm_per_seq: float  # lm_head FLOPs per sampled row
    attn_fixed: float
    kv_coef: float  # s per KV token at full bandwidth, all layers
    kv_half: float
    tile_s: float  # one FlashAttention tile on one SM, all layers
    sms: int
    heads: int
    gpu_per_seq: float
    cpu_serial: float
    cpu_serial_seq: float
    cpu_overlap: float
    cpu_overlap_seq: float
    cpu_overlap_tok: float
    speed: float

    def linear_time(self, tokens: int) -> float:
        lin = self.linear
        if tokens < len(lin):
            return lin[tokens]
        return lin[-1] * tokens / (len(lin) - 1)

    def decode_attn(self, ctx_sum: float) -> float:
        """KV read of all decodes: bandwidth grows with the bytes in flight (concave in context)."""
        if ctx_sum <= 0:
            return 0.0
        return self.kv_coef * math.sqrt(ctx_sum * (ctx_sum + self.kv_half))

    def prefill_attn(self, chunks: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> float:
        """FlashAttention over the chunks (tokens, context before): tiles, waves, split-KV."""
        B = FA_TILE
        ctas = 0
        tiles = 0
        for c, ctx in chunks:
            nq = -(-c // B)
            q0 = -(-ctx // B)
            # query tile i (of nq) sees ctx + its own rows: ceil((ctx + (i+1)B)/B) key tiles,
            # the last one ends at the chunk's end
            tiles += (nq - 1) * q0 + (nq - 1) * nq // 2 + -(-(ctx + c) // B)
            ctas += nq
        if ctas == 0:
            return 0.0
        per_cta = tiles / ctas
        ctas *= self.heads
        if ctas >= self.sms:
            return self.tile_s * -(-ctas // self.sms) * per_cta
        split = self.sms // ctas  # a small grid splits each KV range over idle SMs
        return self.tile_s * math.ceil(per_cta / split) * (1.05 if split > 1 else 1.0)

    def time(
        self,
        chunks: list[tuple[int, int]] | tuple[tuple[int, int], ...],
        num_decodes: int,
        decode_ctx_sum: int,
    ) -> float:
        """Step time of a batch: prefill chunks (tokens, context before) plus decodes."""
        seqs = num_decodes + len(chunks)
        tokens = num_decodes
        for c, _ in chunks:
            tokens += c
        if tokens <= 0:
            return 0.0
        lm = self.lm_per_seq * seqs
        gpu = (
            self.linear_time(tokens)
            + (lm if lm > self.lm_mem else self.lm_mem)
            + self.attn_fixed
            + self.gpu_per_seq * seqs
            + self.decode_attn(decode_ctx_sum)
            + (self.prefill_attn(chunks) if chunks else 0.0)
        )
        hidden = self.cpu_overlap + self.cpu_overlap_seq * seqs + self.cpu_overlap_tok * tokens
        t = gpu + self.cpu_serial + self.cpu_serial_seq * seqs
        if hidden > gpu:
            t += hidden - gpu
        return t * self.speed

    def decode_terms(self, n: int) -> tuple[float, float, float, float, float]:
        """For n decodes: (GPU time without attention, kv_coef, kv_half, serial CPU, overlapped
        CPU), so that the engine's decode loop computes a step as
        gpu = base + kv_coef*sqrt(ctx*(ctx+kv_half)); t = gpu + serial + max(0, overlap - gpu)."""
        lm = self.lm_per_seq * n
        base = (
            self.linear_time(n)
            + (lm if lm > self.lm_mem else self.lm_mem)
            + self.attn_fixed
            + self.gpu_per_seq * n
        )
        serial = self.cpu_serial + self.cpu_serial_seq * n
        overlap = self.cpu_overlap + self.cpu_overlap_seq * n + self.cpu_overlap_tok * n
        return base, self.kv_coef, self.kv_half, serial, overlap

    def decode_time(self, n: int, ctx_sum: int) -> float:
        """Step time of a decode-only batch."""
        return self.time((), n, ctx_sum)


PRESETS: dict[str, HardwareProfile] = {
    "a100": HardwareProfile(
        name="a100",
        tflops=312.0,
        mem_bw_gbs=2039.0,
        mem_gib=80.0,
        sms=108,
        source="measured:a100_llama3_8b",
    ),
    "h100": HardwareProfile(
        name="h100",
        tflops=989.0,
        mem_bw_gbs=3350.0,
        mem_gib=80.0,
        sms=132,
        source="converted:h100_llama2_7b",
        fa_eff=0.6,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
    ),
    "l4": HardwareProfile(
        name="l4",
        tflops=121.0,
        mem_bw_gbs=300.0,
        mem_gib=24.0,
        sms=58,
        source="roofline",
        fa_eff=0.6,
        cpu_serial_s=0.0002,
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
