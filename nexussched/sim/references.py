"""Measured reference step times of canonical batches, and how the simulator runs them.

The references (ms, Llama-3-8B shape, one GPU) are those of issue 11: sums of Vidur's measured
operator profiles (microsoft/vidur `data/profiling`: Llama-3-8B on A100, Llama-2-7B scaled to the
8B shape on H100) and published vLLM runs. tests/test_hardware.py holds the simulator within 15%.
"""

from __future__ import annotations

from dataclasses import replace

from ..perfmodel.telemetry import StepRecord
from .engine import EngineConfig, EngineSim
from .hardware import get_profile
from .request import SimRequest

# Keys: (device, batch label).
REFERENCES_MS: dict[tuple[str, str], float] = {
    ("a100", "1 decode @1k"): 10.3,
    ("a100", "64 decodes @1k"): 16.5,
    ("a100", "256 decodes @1k"): 40.6,
    ("a100", "prefill 2048"): 153.0,
    ("h100", "1 decode @1k"): 6.5,
    ("h100", "64 decodes @1k"): 10.0,
    ("h100", "256 decodes @1k"): 22.8,
    ("h100", "prefill 2048"): 46.5,
}
BATCHES = ("1 decode @1k", "64 decodes @1k", "256 decodes @1k", "prefill 2048")


def simulated_step_ms(device: str, batch: str) -> float:
    """Noise-free duration (ms) of one canonical batch as the engine simulator runs it (nan: no fit)."""
    prof = replace(get_profile(device), noise_cv=0.0, straggler_prob=0.0)
    recs: list[StepRecord] = []
    if batch == "prefill 2048":
        eng = EngineSim(
            prof, telemetry=recs.append, config=EngineConfig(max_num_batched_tokens=8192)
        )
        eng.enqueue(SimRequest(0, 0.0, 2048, 2, 10.0, 1.0), 0.0)
        eng.start_step(0.0)
        eng.finish_step()
        (rec,) = recs
        assert rec.prefill_tokens == 2048 and rec.num_decodes == 0
        return rec.duration * 1e3
    n = int(batch.split()[0])
    ctx = 1024
    eng = EngineSim(
        prof,
        telemetry=recs.append,
        # One step prefills every prompt, so the next step is exactly n decodes at context `ctx`.
        config=EngineConfig(max_num_batched_tokens=n * ctx, max_num_seqs=n),
    )
    if n * (ctx + 3) > eng.total_blocks * eng.block_size:
        return float("nan")  # the batch's KV does not fit this device
    for i in range(n):
        eng.enqueue(SimRequest(i, 0.0, ctx, 3, 100.0, 1.0), 0.0)
    now = 0.0
    while True:
        end = eng.start_step(now)
        assert end is not None
        eng.finish_step()
        now = end
        for r in recs:
            if not r.prefill_chunks and r.num_decodes == n and r.decode_ctx_sum == n * ctx:
                return r.duration * 1e3
