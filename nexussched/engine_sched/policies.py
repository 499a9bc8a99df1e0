"""Engine policies built on the perf model: LENS (planned every step) and a Sarathi-style fixed budget.

Both learn only from the step telemetry of the engine they drive (`observe`), never from a hardware
description, so they run unchanged in the simulator and inside vLLM through the plug-in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from ..perfmodel import LengthEstimator, PerfModel, StepRecord
from .base import EnginePolicy
from .lens import LensConfig, PlanInfo, chunk_for_time, coef_tuple, plan_step
from .plan import StepPlan, StepState

DEFAULT_TPOT = 0.1  # seconds, when neither the caller nor the deployment gives one


class LensPolicy(EnginePolicy):
    """SLO-aware planner: each step sizes and orders the batch with an online perf model."""

    name: ClassVar[str] = "lens"
    plans: ClassVar[bool] = True
    learns: ClassVar[bool] = True

    def __init__(
        self,
        engine_name: str = "",
        config: LensConfig | None = None,
        model: PerfModel | None = None,
        decode_stride: int = 8,
        surprise: float = 0.15,
        **_: object,
    ) -> None:
        self.config = config or LensConfig()
        self.model = model or PerfModel(name=engine_name)
        self.engine_name = engine_name
        # Long runs of decode-only steps differ by one context token per decode: learning from one
        # in `decode_stride` of them loses nothing, unless a step surprises the model by more than
        # `surprise` (relative error), which is always learned from (a speed change shows at once).
        self.decode_stride = max(1, decode_stride)
        self.surprise = surprise
        self._decode_run = 0
        self.last: PlanInfo | None = None
        self.lengths = LengthEstimator()  # final output lengths of the requests this engine ended
        self.steps_planned = 0
        self.steps_observed = 0
        self.steps_learned = 0

    def plan(self, state: StepState) -> StepPlan:
        plan, info = plan_step(state, coef_tuple(self.model), self.config, self.lengths)
        self.last = info
        self.steps_planned += 1
        return plan

    def finished(self, seq_id: object, output_tokens: int, max_tokens: int) -> None:
        self.lengths.observe(output_tokens, max_tokens)

    def fast_decode_ok(self) -> bool:
        # LENS never holds a decode back, so a decode-only run with nothing admissible is the same
        # batch it would plan step by step.
        return True

    def observe(self, rec: StepRecord) -> None:
        self.steps_observed += 1
        if not rec.prefill_chunks and self.decode_stride > 1:
            self._decode_run += 1
            if self._decode_run < self.decode_stride:
                p = self.model.predict_step(0.0, 0.0, rec.num_decodes, rec.decode_ctx_sum)
                if abs(rec.duration - p) <= self.surprise * rec.duration:
                    return
            self._decode_run = 0
        self.steps_learned += 1
        self.model.observe(rec)


class SarathiPolicy(EnginePolicy):
    """FCFS with a fixed chunked-prefill token budget sized offline from the TPOT target.

    The budget is the largest prefill chunk whose predicted step time, next to a reference decode
    batch, stays within the TPOT target (Sarathi-Serve's rule). The prediction comes from a perf model
    fitted on profiling telemetry: a saved model (`perf_model`: path, dict or PerfModel), or else the
    engine's first `calibrate_steps` steps, after which the budget is frozen for good. The reference
    batch is `ref_decodes` decodes of `ref_ctx` context each; unset, the 90th percentile of the
    decode batch sizes in the calibration telemetry at their mean context (or, with a saved model
    and no telemetry, 64 decodes of 1024 tokens).
    """

    name: ClassVar[str] = "sarathi"
    learns: ClassVar[bool] = True  # only until the budget is frozen

    def __init__(
        self,
        engine_name: str = "",
        slo_tpot: float | None = None,
        budget: int | None = None,
        perf_model: PerfModel | dict | str | Path | None = None,
        calibrate_steps: int = 1024,
        ref_decodes: int | None = None,
        ref_ctx: int | None = None,
        align: int = 16,
        **_: object,
    ) -> None:
        slo_tpot = DEFAULT_TPOT if slo_tpot is None else float(slo_tpot)
        if not (math.isfinite(slo_tpot) and slo_tpot > 0):
            raise ValueError(f"sarathi needs a positive TPOT target, got {slo_tpot!r}")
        self.engine_name = engine_name
        self.slo_tpot = slo_tpot
        self.calibrate_steps = calibrate_steps
        self.ref_decodes = ref_decodes
        self.ref_ctx = ref_ctx
        self.align = max(1, align)
        self._records: list[StepRecord] = []
        self.model = _as_model(perf_model, engine_name)
        self.frozen = budget is not None or perf_model is not None
        if self.frozen:
            self.learns = False  # nothing to calibrate: the engine need not emit telemetry to us
        if budget is not None:
            self.budget = int(budget)
        elif perf_model is not None:
            self.budget = self._size(
                self.model,
                64 if ref_decodes is None else ref_decodes,
                1024 if ref_ctx is None else ref_ctx,
            )
        else:
            # Until calibrated: sized with the deliberately pessimistic prior.
            self.budget = self._size(self.model, ref_decodes or 0, ref_ctx or 0)

    def token_budget(self, max_num_batched_tokens: int) -> int:
        return min(self.budget, max_num_batched_tokens)

    def observe(self, rec: StepRecord) -> None:
        if self.frozen:
            return
        self._records.append(rec)
        if len(self._records) >= self.calibrate_steps:
            self._calibrate()

    def _calibrate(self) -> None:
        recs = self._records
        model = PerfModel(name=self.engine_name)
        model.fit_records(recs)
        with_dec = [r for r in recs if r.num_decodes > 0]
        nd = self.ref_decodes
        if nd is None:
            # The budget must hold the TPOT when the engine is busy: size for a large decode batch.
            counts = sorted(r.num_decodes for r in with_dec)
            nd = counts[int(0.9 * (len(counts) - 1))] if counts else 0
        ctx = self.ref_ctx
        if ctx is None:
            dec = sum(r.num_decodes for r in with_dec)
            ctx = round(sum(r.decode_ctx_sum for r in with_dec) / dec) if dec else 0
        self.model = model
        self.ref_decodes, self.ref_ctx = nd, ctx
        self.budget = self._size(model, nd, ctx)
        self.frozen = True
        self._records = []

    def _size(self, model: PerfModel, nd: int, ctx: int) -> int:
        c0, c1, c2, c3, c4 = coef_tuple(model)
        room = self.slo_tpot - (c2 * nd + c3 * nd * ctx + c4)
        # A chunk continuing a prompt half-way through a typical 1k-token prompt.
        b = chunk_for_time(c0, c1, room, 512.0)
        b -= b % self.align
        return max(self.align, nd + b)


def _as_model(src: PerfModel | dict | str | Path | None, name: str) -> PerfModel:
    if src is None:
        return PerfModel(name=name)
    if isinstance(src, PerfModel):
        return src
    if isinstance(src, dict):
        return PerfModel.from_dict(src)
    return PerfModel.load(src)
