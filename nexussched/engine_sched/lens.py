"""LENS: the SLO-aware step planner, as pure functions over a StepState and perf-model coefficients.

Each step the planner answers three questions with the perf model's per-step cost
    t = c0*prefill_tokens + c1*prefill_attn + c2*num_decodes + c3*decode_ctx_sum + c4:

1. How long may this step take? Every running decode has a TPOT target and a *bank*: the time it is
   ahead of (positive) or behind (negative) that target so far. A step may last the target (less a
   safety margin) plus a share of the smallest bank, so decodes that are ahead let prefills catch up
   while a decode that is behind tightens the step. A decode that cannot meet its TPOT any more even
   at the fastest possible steps no longer constrains the others (when `deprioritize` is on).
2. Which prefills, in what order? Prefills already running (holding KV) before waiting ones, as
   vLLM serves them; within each, by priority, then least TTFT slack (deadline minus the engine time
   their remaining prompt needs). A pass of Moore-Hodgson's rule over that order moves the requests
   that would miss their TTFT even so behind the rest, largest work first (with one SLO for all,
   slack order is nearly deadline order, for which the rule maximises the number of requests
   served within their TTFT), instead of letting a hopeless request delay everyone behind it.
   Deferral is bounded: a prefill that has waited `age_limit` x its TTFT SLO is served in arrival
   order ahead of the rest, so no request waits without bound for the others' attainment.
3. How many prompt tokens each? Chunks fill the step's remaining predicted time in that order,
   capped by the token budget, free KV blocks and `max_num_seqs`.

With no decode to protect (light load) the step takes the whole token budget (`max_budget`, by
default the engine's `max_num_batched_tokens`), which is vLLM's throughput-optimal behaviour.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..perfmodel.lengths import LengthEstimator
from .plan import SeqState, StepPlan, StepState

INF = math.inf
AGE_LIMIT = 2.0  # x TTFT SLO; meets issue 9's starved bar (bench_liveness.py --part fairness)


@dataclass(frozen=True, slots=True)
class LensConfig:
    """Knobs of the planner; the defaults are what the benchmarks use."""

    tpot_margin: float = 0.15  # aim steps at (1 - margin) x TPOT target before spending banks
    bank_spend: float = 0.5  # share of a decode's banked TPOT slack one step may use
    min_prefill_tokens: int = 0  # prefill tokens granted even when decodes leave no room
    max_budget: int | None = None  # token cap of one step; None: engine's max_num_batched_tokens
    max_step: float = INF  # hard cap on the predicted step time (s)
    deprioritize: bool = True  # requests that cannot meet their SLO stop constraining others
    ttft_optimism: float = 1.0  # scale on predicted prefill work in the TTFT feasibility test
    horizon: int = 512  # waiting prefills the TTFT ordering considers; the rest keep FCFS order
    chunk_align: int = 1  # round chunks that do not finish a prompt down to a multiple of this
    max_stretch: float = 4.0  # cap on wall time per unit of prefill compute in the TTFT test
    # Bounded unfairness: a prefill waiting longer than this x its TTFT SLO is no longer moved
    # behind the others (Moore-Hodgson) but served in arrival order, ahead of those that are not
    # that old (inf: defer without bound).
    age_limit: float = AGE_LIMIT


@dataclass(slots=True)
class PlanInfo:
    """What the planner decided and why (for telemetry, tests and benchmarks)."""

    step_limit: float  # predicted-time limit of this step (inf: no decode to protect)
    decode_time: float  # predicted time of the decodes alone
    predicted: float  # predicted time of the planned batch
    prefill_tokens: int
    late_decodes: int  # decodes that cannot meet their TPOT any more
    late_prefills: int  # prefills moved behind the rest (cannot meet their TTFT)


def coef_tuple(model: object) -> tuple[float, float, float, float, float]:
    """The five linear coefficients of a PerfModel (or any sequence of five numbers)."""
    c = getattr(model, "coef", model)
    c0, c1, c2, c3, c4 = (float(v) for v in c)  # type: ignore[union-attr]
    return c0, c1, c2, c3, c4


def chunk_cost(c0: float, c1: float, tokens: float, ctx: float) -> float:
    """Predicted extra step time of a prefill chunk of `tokens` after `ctx` computed tokens."""
    return c0 * tokens + c1 * tokens * (ctx + tokens / 2.0)


def chunk_for_time(c0: float, c1: float, room: float, ctx: float) -> int:
    """Largest chunk (tokens) whose predicted cost after `ctx` tokens fits in `room` seconds."""
    if room <= 0.0:
        return 0
    if room == INF:
        return 1 << 30
    qa = c1 / 2.0
    qb = c0 + c1 * ctx
    if qa <= 1e-18:
        return int(room / qb) if qb > 0 else 1 << 30
    return max(0, int((-qb + math.sqrt(qb * qb + 4.0 * qa * room)) / (2.0 * qa)))


def decode_step_limit(
    decodes: Sequence[SeqState],
    now: float,
    decode_time: float,
    cfg: LensConfig,
    lengths: LengthEstimator | None = None,
) -> tuple[float, int]:
    """(step-time limit from the decodes' TPOT targets and banks, count of hopeless decodes).

    A decode's tokens still to come are estimated by `lengths` (finished requests' lengths given
    those generated so far), or else taken at its declared max_tokens: the planner never knows
    the true length."""
    limit = INF
    late = 0
    keep = 1.0 - cfg.tpot_margin
    spend = cfg.bank_spend
    depri = cfg.deprioritize
    for d in decodes:
        slo = d.slo_tpot
        ft = d.first_token_time
        # Time ahead of the target so far: (g - 1) intervals done, the last one ends now.
        bank = slo * (d.generated - 1) - (now - ft if ft is not None else 0.0)
        # Hopeless: already behind by more than a token's budget (a measured fact, not only the
        # model's view), and even decode-only steps from here on cannot bring it back.
        if depri and bank < -slo and bank + _remaining(d, lengths) * (slo - decode_time) < 0.0:
            late += 1
            continue
        allow = keep * slo + spend * bank
        if allow < limit:
            limit = allow
    return limit, late


def _remaining(d: SeqState, lengths: LengthEstimator | None) -> float:
    if lengths is None:
        return float(d.max_tokens - d.generated)
    return lengths.expected_remaining(d.generated, d.max_tokens)


def order_prefills(
    prefills: Sequence[SeqState],
    now: float,
    c0: float,
    c1: float,
    stretch: float,
    cfg: LensConfig,
) -> tuple[list[SeqState], int]:
    """Prefills in service order and how many of them were moved back as late.

    Requests already past their first token (preempted and recomputing) come first: their TTFT is
    settled and their TPOT clock runs. Then prefills already running (partly computed, holding KV;
    vLLM serves its running list before its waiting queue, so a plan that interleaves them could not
    be followed), then waiting ones; within each, by priority (lower first, as vLLM), then least
    TTFT slack. `stretch` converts compute time to wall time (steps also carry decodes).
    """
    resumed: list[SeqState] = []
    keyed: list[tuple[int, int, float, int, float, float]] = []
    rest: list[SeqState] = []
    a = c0 * stretch * cfg.ttft_optimism
    b = c1 * stretch * cfg.ttft_optimism
    horizon = cfg.horizon
    age = cfg.age_limit
    aged = 0
    for i, p in enumerate(prefills):
        if p.first_token_time is not None:
            resumed.append(p)
        elif i >= horizon:
            rest.append(p)
        else:
            need = p.prompt_tokens + p.generated - p.computed
            work = need * (a + b * (p.computed + need * 0.5))  # chunk_cost, inlined: hot loop
            deadline = p.arrival + p.slo_ttft
            slack = deadline - work
            if now - p.arrival > age * p.slo_ttft:
                # aged: ahead of the younger ones, in arrival order, and never deferred
                # (a deadline of -inf marks it for the pass below)
                slack = p.arrival - 1e12  # before any real slack, in arrival order
                deadline = -INF
                aged += 1
            # (class, priority, slack, index) order; the index is unique, so plain tuple sorting
            # never compares further.
            keyed.append((0 if p.running else 1, p.priority, slack, i, work, deadline))
    keyed.sort()
    if not cfg.deprioritize:
        return resumed + [prefills[k[3]] for k in keyed] + rest, 0
    # Moore-Hodgson: walk in order; when the running finish time passes a deadline, drop the
    # largest job so far. The dropped ones are served after all on-time ones, in arrival order.
    t = now
    heap: list[tuple[float, int]] = []
    dropped: list[int] = []
    push = heapq.heappush
    for j, k in enumerate(keyed):
        work = k[4]
        t += work
        if aged and k[5] == -INF:
            continue  # aged: served in arrival order whatever it costs the others
        push(heap, (-work, j))
        if t > k[5]:
            w, jj = heapq.heappop(heap)
            t += w
            dropped.append(jj)
    if not dropped:
        return resumed + [prefills[k[3]] for k in keyed] + rest, 0
    gone = set(dropped)
    ontime = [prefills[k[3]] for j, k in enumerate(keyed) if j not in gone]
    late = sorted(keyed[j][3] for j in dropped)
    return resumed + ontime + [prefills[i] for i in late] + rest, len(late)


def plan_step(
    state: StepState,
    coef: tuple[float, float, float, float, float],
    cfg: LensConfig,
    lengths: LengthEstimator | None = None,
) -> tuple[StepPlan, PlanInfo]:
    """The step's plan: token budget, prefill service order and per-prefill chunk caps.
    `lengths`: the engine's output-length estimates (None: trust each declared max_tokens)."""
    c0, c1, c2, c3, c4 = coef
    decodes = state.decodes
    nd = len(decodes)
    bs = state.block_size
    ctx = 0
    new_blocks = 0  # decodes whose last KV block is full allocate one this step
    for d in decodes:
        c = d.computed
        ctx += c
        if c % bs == 0:
            new_blocks += 1
    t_dec = c2 * nd + c3 * ctx + c4
    limit, late_dec = decode_step_limit(decodes, state.now, t_dec, cfg, lengths) if nd else (INF, 0)
    if cfg.max_step < limit:
        limit = cfg.max_step
    cap = cfg.max_budget or state.max_num_batched_tokens
    tokens_left = cap - nd
    room = limit - t_dec
    info = PlanInfo(limit, t_dec, t_dec, 0, late_dec, 0)
    prefills = state.prefills
    if not prefills or tokens_left <= 0:
        return StepPlan(token_budget=max(nd, 1), order=[], chunk_cap={}), info
    # Wall time per unit of prefill compute: each step also pays for the decodes and the constant.
    per_step = max(min(room, chunk_cost(c0, c1, tokens_left, 0.0)), 1e-6)
    stretch = min((per_step + t_dec) / per_step, cfg.max_stretch)
    ordered, late_pre = order_prefills(prefills, state.now, c0, c1, stretch, cfg)
    info.late_prefills = late_pre
    # Aged prefills (waiting past age_limit x their TTFT SLO) come first and take chunks as vLLM
    # would, from the whole token budget: draining them must not wait for decodes' TPOT room,
    # else a backlog of them drains slower than under vLLM's own schedule.
    now = state.now
    age = cfg.age_limit
    oldest = ordered[0] if ordered else None
    aged_first = (
        oldest is not None
        and oldest.first_token_time is None
        and now - oldest.arrival > age * oldest.slo_ttft
    )
    if room < INF:
        floor = cfg.min_prefill_tokens
        if room <= 0.0 and floor <= 0 and not aged_first:
            return StepPlan(token_budget=max(nd, 1), order=[], chunk_cap={}), info
    else:
        floor = 0
    free = state.free_blocks - new_blocks
    seats = state.max_num_seqs - state.num_running
    align = cfg.chunk_align
    order: list = []
    caps: dict = {}
    total = 0
    spent = 0.0
    for p in ordered:
        if tokens_left <= 0:
            break
        if not p.running:
            if seats <= 0:
                continue
        need = p.prompt_tokens + p.generated - p.computed
        if aged_first and p.first_token_time is None and now - p.arrival > age * p.slo_ttft:
            n = min(need, tokens_left)
        else:
            n = min(need, tokens_left, chunk_for_time(c0, c1, room - spent, p.computed))
        if n < need and total == 0 and n < floor:
            n = min(need, tokens_left, floor)  # progress floor for the first prefill
        if n < need and align > 1:
            n -= n % align
        if n <= 0:
            break
        have = -(-p.computed // bs)
        extra = -(-(p.computed + n) // bs) - have
        if extra > free:
            continue  # as vLLM: a request whose KV does not fit waits; later ones may fit
        free -= extra
        if not p.running:
            seats -= 1
        order.append(p.id)
        caps[p.id] = n
        total += n
        tokens_left -= n
        spent += chunk_cost(c0, c1, n, p.computed)
        if n < need:
            break  # the step's time or token budget is used up
    info.prefill_tokens = total
    info.predicted = t_dec + spent
    return StepPlan(token_budget=nd + total, order=order, chunk_cap=caps), info
