"""The engine simulator agrees with known vLLM behaviour."""

from __future__ import annotations

import math

import pytest

from nexussched.engine_sched.base import EnginePolicy
from nexussched.perfmodel import StepRecord
from nexussched.sim import EngineConfig, EngineSim, SimRequest, get_profile
from nexussched.sim.hardware import parse_cluster
from nexussched.sim.references import REFERENCES_MS


def run_engine(eng: EngineSim, reqs: list[SimRequest]) -> list[SimRequest]:
    """Drive one engine alone: requests arrive at their arrival times, steps run back to back."""
    pending = sorted(reqs, key=lambda r: r.arrival)
    now = 0.0
    done: list[SimRequest] = []
    i = 0
    while len(done) < len(reqs):
        while i < len(pending) and pending[i].arrival <= now:
            eng.enqueue(pending[i], now)
            i += 1
        nxt = pending[i].arrival if i < len(pending) else math.inf
        end = eng.start_step(now, nxt)
        if end is None:
            now = nxt
            continue
        done.extend(eng.finish_step())
        now = end
    return done


def req(i: int, prompt: int, output: int, arrival: float = 0.0) -> SimRequest:
    return SimRequest(i, arrival, prompt, output, 2.0, 0.1)


class NoFastPath(EnginePolicy):
    name = "nofast"

    def fast_decode_ok(self) -> bool:
        return False


def test_single_request_ttft_equals_its_prefill_steps():
    recs: list[StepRecord] = []
    eng = EngineSim(
        get_profile("a100"), telemetry=recs.append, config=EngineConfig(max_num_batched_tokens=512)
    )
    r = req(0, prompt=1500, output=5)
    run_engine(eng, [r])
    prefill_steps = [x for x in recs if x.prefill_chunks]
    # 1500 tokens in chunks of at most 512: 512 + 512 + 476
    assert [x.prefill_tokens for x in prefill_steps] == [512, 512, 476]
    assert r.ttft == pytest.approx(sum(x.duration for x in prefill_steps), rel=1e-9)
    assert r.generated == 5 and len(recs) == 3 + 4


@pytest.mark.parametrize("device", ["a100", "h100"])
def test_step_times_agree_with_measured_references(device):
    """A whole engine, noise on: a 2048-token prompt's TTFT and the decode steps of 1 and 64
    requests near 1k context land within 15% of the measured references."""
    prof = get_profile(device)
    first = req(0, prompt=2048, output=2)
    run_engine(EngineSim(prof, seed=3, config=EngineConfig(max_num_batched_tokens=2048)), [first])
    assert first.ttft * 1e3 == pytest.approx(REFERENCES_MS[(device, "prefill 2048")], rel=0.15)
    for n in (1, 64):
        recs: list[StepRecord] = []
        eng = EngineSim(prof, telemetry=recs.append, seed=n)
        run_engine(eng, [req(i, 1000, 60) for i in range(n)])
        dec = [
            x.duration
            for x in recs
            if not x.prefill_chunks and x.num_decodes == n and x.decode_ctx_sum <= n * 1060
        ]
        assert len(dec) >= 20
        ref = REFERENCES_MS[(device, f"{n} decode{'s' if n > 1 else ''} @1k")]
        assert sum(dec) / len(dec) * 1e3 == pytest.approx(ref, rel=0.15)


def test_decode_steps_slow_as_batch_grows():
    prof = get_profile("a100")
    means = []
    for n in (1, 32, 128, 256):
        recs: list[StepRecord] = []
        eng = EngineSim(prof, telemetry=recs.append, seed=n)
        run_engine(eng, [req(i, 200, 60) for i in range(n)])
        dec = [x.duration for x in recs if not x.prefill_chunks and x.num_decodes == n]
        assert len(dec) > 20
        means.append(sum(dec) / len(dec))
    assert means == sorted(means)
    assert means[-1] > 1.5 * means[0]


def test_kv_exhaustion_preempts_and_every_request_still_finishes():
    # 40 blocks of 16 tokens = 640 tokens of KV for 6 requests that need ~200 each at the end.
    eng = EngineSim(get_profile("a100"), config=EngineConfig(num_blocks=40))
    reqs = [req(i, 100, 100) for i in range(6)]
    done = run_engine(eng, reqs)
    assert eng.preemptions > 0
    assert sum(r.preemptions for r in reqs) == eng.preemptions
    assert len(done) == 6 and all(r.generated == 100 for r in reqs)
    assert eng.free_blocks == eng.total_blocks  # every block returned


def test_chunked_prefill_bounds_step_time():
    prof = get_profile("a100")
    worst = {}
    for budget in (512, 8192):
        recs: list[StepRecord] = []
        eng = EngineSim(
            prof, telemetry=recs.append, config=EngineConfig(max_num_batched_tokens=budget)
        )
        reqs = [req(i, 6000, 20, arrival=0.05 * i) for i in range(4)]
        run_engine(eng, reqs)
        assert max(x.prefill_tokens + x.num_decodes for x in recs) <= budget
        worst[budget] = max(x.duration for x in recs)
    assert worst[512] < worst[8192] / 4


def test_macro_steps_match_step_by_step_simulation():
    # All arrivals at t=0, so no outside event truncates a run: both paths draw the same noise.
    def finish_times(policy):
        eng = EngineSim(
            get_profile("h100"),
            seed=7,
            policy=policy,
            config=EngineConfig(max_num_batched_tokens=2048),
        )
        reqs = [req(i, 300 + 50 * i, 40 + 13 * i) for i in range(12)]
        run_engine(eng, reqs)
        return [(r.first_token, r.finish, r.max_itl) for r in reqs], eng.steps

    fast, steps_fast = finish_times(None)
    slow, steps_slow = finish_times(NoFastPath())
    assert steps_fast == steps_slow
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_truncated_macro_step_admits_a_new_request_at_the_next_boundary():
    eng = EngineSim(get_profile("a100"), seed=1)
    first = req(0, 100, 500)
    eng.enqueue(first, 0.0)
    now = 0.0
    end = eng.start_step(now)  # prefill
    eng.finish_step()
    end = eng.start_step(end)  # a long decode-only run
    assert eng._macro is not None and end > 1.0
    late = req(1, 100, 5, arrival=0.5)
    eng.enqueue(late, 0.5)
    new_end = eng.truncate(0.5)
    assert 0.5 <= new_end < 0.5 + 0.05
    eng.finish_step()
    eng.start_step(new_end)
    assert late in eng.running  # admitted right at the boundary


def test_profiles_rank_by_speed_and_cluster_spec_parses():
    a, h, l4 = (get_profile(n).step_model() for n in ("a100", "h100", "l4"))
    for n, ctx in ((1, 500), (64, 64000)):
        assert h.decode_time(n, ctx) < a.decode_time(n, ctx) < l4.decode_time(n, ctx)
    assert [p.name for p in parse_cluster("a100:2,l4:1")] == ["a100", "a100", "l4"]
    with pytest.raises(ValueError, match="unknown hardware profile"):
        parse_cluster("tpu:2")
    with pytest.raises(ValueError, match="positive"):
        parse_cluster("a100:0")
