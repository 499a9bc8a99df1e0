"""A capacity ceiling on any router's goodput on a cluster: benchmark-only (it reads the
simulator's hardware profiles, which no policy may), for issue 12's bars.

Why the sum of single-engine goodputs is no bound: one engine alone cannot absorb bursts that a
cluster spreads, so each single-engine goodput is lower than that engine's share of the
cluster's. This bound instead counts work.

Work. On engine i a request of P prompt tokens (of which at most `reusable` are served from a
prefix cache) and O output tokens (its true length, cut at max_tokens under cap:N) costs at least

    w_i = speed_i * ( kappa_i * (P - reusable + O - 1)            linear layers
                      + O * (gpu_per_seq + cpu_serial_seq + lm_per_seq)
                      + a_i * (n * reusable + n^2 / 2)             prefill attention, n = P - reusable
                      + kv_coef_i * ((O - 1) * P + (O - 1)(O - 2) / 2) )   decode KV reads

seconds of its step time, however it is batched: a step of T tokens and s sequences takes at
least linear(T) + lm_per_seq * s + gpu_per_seq * s + cpu_serial_seq * s + decode_attn(ctx_sum)
(StepModel.time; every other term is >= 0), linear(T) >= kappa * T with kappa = the cheapest
linear time per token at any batch size, decode_attn(S) = kv_coef * sqrt(S (S + half)) >=
kv_coef * S, prefill_attn(chunks) >= a x sum over chunks (c, ctx) of c (ctx + c / 2) with
a = tile_s * heads / (sms * FA_TILE^2) (its tiles cover at least that area of the causal score
matrix, over at most `sms` SMs at a time; summed over any chunking of the n computed prompt
tokens the areas make n * reusable + n^2 / 2), a request takes part in at least O steps and its
decode steps read contexts
P, P + 1, ..., P + O - 2 (the simulator's `computed`). Step-time noise has mean >= 1
(lognormal of mean 1, stragglers only slower), so over many steps it does not lower the total.
Preemption and re-prefill only add work.

Two bounds; both pool the engines of one type and split requests over types fractionally (a
relaxation, so still a bound).

- `fluid`: the long-run rate. At rate lambda the cluster must do lambda x (mean work) per second:
  the largest lambda at which some split of the trace's requests over the engine types keeps
  every type's work within its engines' time (a linear program). Above it any backlog grows
  without bound in a long run (the backlog counts requests without a first token, and nothing
  stops a request after its first token, so a bounded backlog means every request is served).
- `slice`: the finite replay that goodput measures (rate scale s, >= 90% of requests meeting
  both SLOs). A request meeting them has its first token by a/s + TTFT and is done by a/s +
  TTFT + TPOT * (O - 1) (TPOT is its mean time per token after the first). So in every window
  [t0, t1], the requests arriving from t0 on bring work that must be done inside it: the whole
  work of those due to be done by t1, the prefill work of those due only to have their first
  token by then; it must fit in (t1 - t0) per engine, less the costliest up to 10% of all
  requests (each window may drop different ones, whose work, and the stability test's view of
  them, is ignored: optimistic, so still a bound). Across types it is weighed with weights v_k
  > 0: u_r = min_k v_k w_rk gives sum_r u_r <= sum_k v_k x (type k's work) <= sum_k v_k n_k
  (t1 - t0) whatever the split; the weights are the fluid program's duals and 1 / mean work,
  and the lower bound of the two is kept. The largest s at which every window holds bounds the
  goodput of any router on this slice. It is far looser than `fluid`: a finite slice lets work
  spill past its last arrival (the engines drain after it), and 10% of requests may be dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from nexussched.sim.hardware import FA_TILE, HardwareProfile, StepModel
from nexussched.sim.request import MAX_TOKENS_DEFAULT, parse_max_tokens
from nexussched.traces import Trace


def kappa(sm: StepModel) -> float:
    """The cheapest linear-layer time per token at any batch size (beyond the table the time
    grows in proportion, so the table's ratios cover every size)."""
    lin = sm.linear
    return min(lin[t] / t for t in range(1, len(lin)))


def work(
    sm: StepModel, prompt: int, output: int, cached: int = 0, kap: float | None = None
) -> float:
    """Least step time (s) one request adds to an engine of this step model (module doc);
    `kap`: kappa(sm), if already known."""
    o1 = max(0, output - 1)
    computed = max(0, prompt - cached) + o1
    per_seq = sm.gpu_per_seq + sm.cpu_serial_seq + sm.lm_per_seq
    kv = sm.kv_coef * (o1 * prompt + o1 * (o1 - 1) / 2)
    k = kappa(sm) if kap is None else kap
    return sm.speed * (k * computed + max(1, output) * per_seq + kv) + _attn(sm, prompt, cached)


def _attn(sm: StepModel, prompt: int, cached: int) -> float:
    """Least prefill attention time of a prompt's computed tokens (module doc)."""
    n = max(0, prompt - cached)
    h = prompt - n
    return sm.speed * sm.tile_s * sm.heads / (sm.sms * FA_TILE * FA_TILE) * (n * h + n * n / 2)


def prefill_work(sm: StepModel, prompt: int, cached: int = 0, kap: float | None = None) -> float:
    """Least step time of a request's prefill (its first token): its uncached prompt tokens
    through the linear layers and their attention, and one step's per-sequence work (the part of
    work() due by its TTFT deadline)."""
    k = kappa(sm) if kap is None else kap
    per_seq = sm.gpu_per_seq + sm.cpu_serial_seq + sm.lm_per_seq
    return sm.speed * (k * max(0, prompt - cached) + per_seq) + _attn(sm, prompt, cached)


@dataclass(frozen=True)
class Ceiling:
    fluid_rps: float  # long-run rate no router can sustain beyond
    slice_rps: float  # goodput no router can reach on this slice (rate scale x trace rate)
    slice_scale: float


def _types(profiles: Sequence[HardwareProfile]) -> list[tuple[StepModel, int]]:
    count: dict[HardwareProfile, int] = defaultdict(int)
    for p in profiles:
        count[p] += 1
    return [(p.step_model(), n) for p, n in count.items()]


def _works(
    trace: Trace, types, cached: Sequence[int] | None, outs: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(whole work, prefill work) per request (rows) and engine type (columns)."""
    reqs = trace.requests
    c = cached if cached is not None else [0] * len(reqs)
    ks = [(sm, kappa(sm)) for sm, _ in types]
    w = np.array([[work(sm, r.prompt_tokens, o, k, kap) for sm, kap in ks]
                  for r, k, o in zip(reqs, c, outs, strict=True)])  # fmt: skip
    pf = np.array([[prefill_work(sm, r.prompt_tokens, k, kap) for sm, kap in ks]
                   for r, k in zip(reqs, c, strict=True)])  # fmt: skip
    return w, pf


def fluid_rate(w: np.ndarray, counts: Sequence[int]) -> tuple[float, np.ndarray]:
    """(Largest long-run request rate, the program's duals per engine type): minimise the
    makespan M of one copy of the trace over the share x_rk of request r on type k (sum_k x_rk
    = 1; sum_r x_rk w_rk <= counts_k M); the rate is N / M."""
    n, k = w.shape
    nv = n * k + 1
    cost = np.zeros(nv)
    cost[-1] = 1.0
    # row j: sum_r w_rj x_rj - counts_j M <= 0 (x_rj is variable r * k + j, M the last)
    rows = np.concatenate([np.repeat(np.arange(k), n), np.arange(k)])
    cols = np.concatenate([(np.arange(n)[None, :] * k + np.arange(k)[:, None]).ravel(),
                           np.full(k, n * k)])  # fmt: skip
    vals = np.concatenate([w.T.ravel(), -np.asarray(counts, dtype=float)])
    a_ub = coo_matrix((vals, (rows, cols)), shape=(k, nv))
    eq_rows = np.repeat(np.arange(n), k)
    a_eq = coo_matrix((np.ones(n * k), (eq_rows, np.arange(n * k))), shape=(n, nv))
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(k), A_eq=a_eq, b_eq=np.ones(n),
                  bounds=(0, None), method="highs")  # fmt: skip
    if res.status != 0:
        raise RuntimeError(f"fluid bound: {res.message}")
    return n / res.x[-1], -np.asarray(res.ineqlin.marginals)


def slice_scale(
    u: np.ndarray,
    up: np.ndarray,
    cap: float,
    arr: np.ndarray,
    ttft: float,
    lag: np.ndarray,
    share: float,
    windows: int,
) -> float:
    """Largest rate scale s at which every window [t0, t1] holds its weighted work within
    cap x (t1 - t0): of the requests arriving from t0 on, the whole work (u) of those due to
    finish by t1 and the prefill work (up) of those due only to have their first token by
    then, less the costliest of them up to (1 - share) x N; arrivals `arr` at scale 1 (so
    arr / s at scale s), first-token deadlines + ttft, finish deadlines + lag. Windows: arrival
    quantiles x deadline quantiles. Bisection over s (a faster replay only brings deadlines
    closer together)."""
    n = len(u)
    drop = int((1.0 - share) * n)
    q = np.linspace(0, 1, windows + 1)

    def holds(s: float) -> bool:
        a = arr / s
        dl = a + lag
        df = a + ttft
        ends = np.unique(np.concatenate([np.quantile(dl, q[1:]), np.quantile(df, q[1:])]))
        for t0 in np.quantile(a, q[:-1]):
            after = a >= t0
            for t1 in ends:
                if t1 <= t0:
                    continue
                x = np.where(after & (dl <= t1), u, np.where(after & (df <= t1), up, 0.0))
                x = x[x > 0]
                if len(x) <= drop:
                    continue
                kept = np.partition(x, len(x) - drop - 1)[: len(x) - drop] if drop else x
                if kept.sum() > cap * (t1 - t0):
                    return False
        return True

    lo = hi = 1e-3
    while hi < 1e5 and holds(hi):
        lo, hi = hi, hi * 2
    if lo == hi:
        return 0.0
    while hi / lo > 1.005:
        mid = (lo * hi) ** 0.5
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _outputs(trace: Trace, max_tokens: str) -> list[int]:
    """True output lengths, cut where an engine stops them (max_tokens cap:N)."""
    cap = parse_max_tokens(max_tokens)
    return [max(1, r.output_tokens if cap is None else min(r.output_tokens, cap))
            for r in trace.requests]  # fmt: skip


def fluid_ceiling(
    trace: Trace,
    profiles: Sequence[HardwareProfile],
    cached: Sequence[int] | None = None,
    max_tokens: str = MAX_TOKENS_DEFAULT,
) -> float:
    """The long-run bound alone (req/s): capacity_ceiling(...).fluid_rps without the slice's
    windows (it needs no SLOs: the least work does not depend on them)."""
    types = _types(profiles)
    counts = np.array([n for _, n in types], dtype=float)
    w, _ = _works(trace, types, cached, _outputs(trace, max_tokens))
    return fluid_rate(w, counts)[0]


def capacity_ceiling(
    trace: Trace,
    profiles: Sequence[HardwareProfile],
    slo_ttft: float,
    slo_tpot: float,
    cached: Sequence[int] | None = None,
    target: float = 0.9,
    windows: int = 24,
    max_tokens: str = MAX_TOKENS_DEFAULT,
) -> Ceiling:
    """Both bounds (module doc) for `trace` on `profiles`; `cached`: per request, prompt tokens
    a cache could serve at best (None: none); `max_tokens`: what clients declare (the replay's
    Information.max_tokens: under cap:N an engine stops a longer output at N)."""
    outs = _outputs(trace, max_tokens)
    types = _types(profiles)
    counts = np.array([n for _, n in types], dtype=float)
    w, pf = _works(trace, types, cached, outs)
    fluid, dual = fluid_rate(w, counts)
    a = np.array([r.arrival for r in trace.requests], dtype=float)
    a -= a.min()
    lag = np.array([slo_ttft + slo_tpot * (o - 1) for o in outs])
    best = np.inf
    for v in (dual, 1.0 / w.mean(axis=0)):
        if not np.all(v > 0):
            continue  # a type the fluid optimum leaves idle: its weight would be 0
        u = (w * v).min(axis=1)
        up = (pf * v).min(axis=1)
        sc = slice_scale(u, up, float(v @ counts), a, slo_ttft, lag, target, windows)
        best = min(best, sc)
    return Ceiling(fluid, best * trace.rate, best)
