"""PRISM: predictive, state-driven routing with late binding and re-binding.

For each request and each engine PRISM predicts, with that engine's own learned step-time model
(one PerfModel per engine, fitted online from the engine's step telemetry), the request's TTFT
there and the step time the engine's decodes would see with it added. It never reads a hardware
profile: a cold engine looks like every other cold engine until its telemetry says otherwise.

Per engine it keeps, besides the model:
- U ("busy until"): when the engine will have prefilled the work ahead of a new request, at the
  pace its telemetry shows (the share of a busy step's time its prefills get). A request's
  predicted TTFT there is max(U - now, 0) + its own prefill time.
- V, a pacing clock, for engines that let queued prefills stretch their decodes' steps (vLLM's
  default batching: while prefills queue, its decodes' steps run far beyond the TPOT target).
  Prefill work is admitted to such an engine at a rate that leaves its decodes' predicted step
  time within the TPOT target: a share rho = 1 - decode_step / target; sending work w advances V
  by w / rho, and the engine has room while V <= now + slack ("without breaking the others").
  An engine whose decodes keep their pace while prefills queue (an SLO-aware planner such as
  LENS) is not paced twice: it gets a deep queue, which it orders itself; there, U counts only the
  work of queued requests that can still meet their TTFT, since such a planner serves late ones
  last.

The request goes to the engine with room that gives the lowest predicted TTFT, ties going to the
one with the most headroom. When no engine has room it waits at the router (late binding, `holds`)
and is handed to the first engine that has room for it and can still meet its TTFT (pull()).
Held requests are ordered by priority (lower first, as vLLM), then by `order` (edf: earliest TTFT
deadline; lifo: newest first; cost: least work first). One that can no longer meet its TTFT on any
engine is served only from spare room, so it does not delay requests that still can. Every
`tick_interval`, requests queued at an engine but not started move to an engine that would now
serve them sooner (the general form of FastDeploy's work stealing), at most `max_moves` times
each. With `shed`, a request whose TTFT no engine can meet is refused (SloUnattainable: 429).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import fields

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy
from .prefix_index import BLOCK_TOKENS
from .prism_config import INF, PrismConfig
from .prism_engine import EngineState, ReqState
from .prism_predict import PrismPredictor
from .prism_rebind import Rebinding

__all__ = ["Prism", "PrismConfig", "SloUnattainable"]  # PrismConfig: re-exported, as before


class SloUnattainable(NoEngineAvailable):
    """No engine can meet the request's SLO (admission control; the live router answers 429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Prism(Rebinding, PrismPredictor, RoutingPolicy):
    """Predictive SLO-aware routing. Keyword arguments are PrismConfig fields."""

    name = "prism"

    def __init__(self, config: PrismConfig | None = None, **kwargs: object) -> None:
        if config is None:
            names = {f.name for f in fields(PrismConfig)}
            bad = sorted(set(kwargs) - names)
            if bad:
                raise ValueError(f"prism: unknown option(s) {', '.join(bad)}")
            config = PrismConfig(**kwargs)  # type: ignore[arg-type]
        elif kwargs:
            raise ValueError("prism: give either a config or keyword options, not both")
        super().__init__(config)
        self.uses_prefix = config.prefix_aware  # the live router hashes prompt blocks for it
        self.holds = config.late_binding
        self.tick_interval = config.tick_interval
        self._held: list[tuple[tuple, int, ReqState]] = []  # sorted by (key, seq)
        self._hopeless: list[tuple[tuple, int, ReqState]] = []
        self._seq = 0
        self.moves = 0
        self.shed = 0
        self._rng = random.Random(config.seed)

    # ---- routing ----------------------------------------------------------------------------
    def _key(self, info: RequestInfo, out: float) -> tuple:
        o = self.cfg.order
        if o == "edf":
            k = info.arrival + info.slo_ttft
        elif o == "lifo":
            k = -info.arrival
        else:
            k = info.prompt_tokens + 0.25 * out
        return (info.priority, k)

    def _keyed(self, r: ReqState, out: float) -> ReqState:
        """r with its queue key (`out`: its expected output length, as route() had it)."""
        if r.key is None:
            r.key = self._key(r.info, out)
        return r

    def place(self, req: RequestInfo, idx: int, now: float) -> None:
        """Account for `req` sent to engine `idx` by someone else (shadow mode: PRISM predicts
        and learns next to another router's choices, as bench_learning_error does)."""
        self._engine(idx)
        out = self._expected_output(req)
        r = ReqState(req, self._key(req, out), out)
        if self.cfg.prefix_aware and req.prefix_hashes:
            r.hits = self._hits(req, len(self._eng))
        self._bind(r, idx, now)

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int | None:
        n = len(engines)
        if len(self._eng) < n:
            self._engine(n - 1)
            self._sync(engines)
        cfg = self.cfg
        out = self.lengths.expected_new(max(1, int(req.max_tokens)))  # _expected_output
        # (its queue key only if it waits at the router: _keyed; most never do)
        r = ReqState(req, None, out)
        P = r.prompt
        PP = P * P * 0.5
        hits = None
        hashes = req.prefix_hashes
        if hashes and cfg.prefix_aware:
            hits = r.hits = self._prefix.hit_tokens(hashes, n, (P - 1) // BLOCK_TOKENS)  # _hits
        rctx = r.ctx
        slack_t = now + cfg.slack
        kvcap = cfg.kv_cap
        self._tpot_ref += (req.slo_tpot - self._tpot_ref) * 0.01
        best = wait_best = -1
        best_t = best_room = wait_t = INF
        # prefix affinity: the engine with room that meets the SLO (with slack) and holds most
        aff = hits is not None and cfg.prefix_affinity
        margin = cfg.ttft_margin
        on_time = r.deadline - now - cfg.slack
        # the home: the best by (meets the SLO, cached tokens, -t), compared field by field
        home = home_h = -1
        home_ok = False
        home_t = INF
        best_kv = wait_kv = home_kv = cheap_kv = 0.0  # KV each would add there (for _bind)
        kc = cfg.place_cost if aff else 0.0
        hmax = max(hits) if kc else 0  # type: ignore[arg-type]
        cheap, cheap_c, cheap_t = -1, INF, INF
        eng = self._eng
        jitter = cfg.jitter
        hold_pace = cfg.hold_for_pace
        # The hot loop: a handful of float operations per engine (>= 5,000 decisions/s at 64).
        for i in range(n):
            e = eng[i]
            if P >= e.kv_tokens or not engines[i].healthy:
                continue
            base = e.base + e.c2 + e.c3 * rctx
            h = 0 if hits is None else hits[i]
            if not h:
                w = e.c0 * P + e.c1 * PP
            else:
                w = e.c0 * (P - h) + e.c1 * (P - h) * (h + (P - h) * 0.5)
            busy = e.n + e.rn
            t = (w / e.pi if busy and base > e.c4 else w) + base
            U = e.U
            u = U - now
            if u > 0:
                t += u
            if jitter:
                t += self._rng.random() * jitter
            # KV it adds there: a hit on blocks requests in flight there hold takes no new block
            # (e.kv_need(r), its common no-sharing case inlined: this loop runs for every engine
            # on every request)
            live = e.live
            if not h or not live or hashes[0] not in live:
                kv = rctx
            else:
                k = e.shared_tokens(hashes, h)
                kv = rctx - k if k < rctx else 0.0
            if busy == 0 or (
                (e.kv_used if e.kv_seen < 0 else e.kv_seen * e.kv_tokens + e.kv_new) + kv
                <= kvcap * e.kv_tokens
                and (not hold_pace or self._pace_room(e, req, now, base))
            ):
                # headroom: how far below its limits the engine stays (larger is better)
                room = (slack_t - e.V) if e.paced else (now - U)
                if t < best_t - 1e-3 or (t <= best_t + 1e-3 and room > best_room):
                    best, best_t, best_room, best_kv = i, t, room, kv
                if aff:
                    ok = t * margin <= on_time
                    if ok != home_ok:
                        better = ok
                    else:
                        better = h > home_h or (h == home_h and t < home_t)
                    if better:
                        home, home_ok, home_h, home_t, home_kv = i, ok, h, t, kv
                    if kc:
                        # the compute of what another engine holds and this one would recompute
                        c = t
                        if h < hmax:
                            n0 = P - hmax
                            c += kc * (w - e.c0 * n0 - e.c1 * n0 * (hmax + n0 * 0.5))
                        if c < cheap_c:
                            cheap, cheap_c, cheap_t, cheap_kv = i, c, t, kv
            else:
                # when it would have room (one that is TPOT-full waits for decodes to finish)
                paced = e.paced
                qlim = now + (cfg.queue_limit if paced else cfg.self_paced_queue)
                d = e.V - slack_t if paced else 0.0
                if U - qlim > d:
                    d = U - qlim
                cap = req.slo_tpot * cfg.tpot_margin * (1.0 - cfg.min_share)
                t += (d if d > 0 else 0.0) + (0.0 if base <= cap else cfg.slack)
                if t < wait_t:
                    wait_best, wait_t, wait_kv = i, t, kv
        if best < 0 and wait_best < 0:
            if not any(v.healthy for v in engines):
                raise NoEngineAvailable("no healthy engine")
            raise SloUnattainable(
                f"a request of {P} prompt tokens fits no engine's KV cache", cfg.retry_after
            )
        if cfg.shed:
            t = best_t if best >= 0 else wait_t + self._held_wait(self._keyed(r, out))
            if now + t * cfg.ttft_margin > r.deadline:
                self.shed += 1
                raise SloUnattainable(
                    f"predicted TTFT {t:.2f}s exceeds the {req.slo_ttft:.2f}s SLO on every engine",
                    max(cfg.retry_after, t - req.slo_ttft),
                )
        if home >= 0 and home != best and (home_ok or now + best_t * margin > r.deadline):
            best, best_t, best_kv = home, home_t, home_kv
        elif cheap >= 0 and cheap != best:
            # no engine holding its prefix meets its TTFT: the soonest elsewhere must also be
            # worth the prefill compute it adds there (see place_cost)
            best, best_t, best_kv = cheap, cheap_t, cheap_kv
        if (
            self.holds
            and cfg.defer_hopeless
            and eng[best if best >= 0 else wait_best].paced
            # (a request predicted to meet its TTFT where it goes is not hopeless: with no
            # negative coefficient there, that prediction is at least _min_prefill's bound)
            and not (best >= 0 and eng[best].nonneg and now + best_t * margin <= r.deadline)
            and now + self._min_prefill(r) * margin > r.deadline
            and not any(e.n + e.rn == 0 and P < e.kv_tokens for e in eng[:n])
        ):
            # It cannot make its TTFT anywhere, and the engine it would go to is one PRISM paces
            # (its decodes do not keep their pace while prefills queue, as under vLLM's
            # first-come-first-served batching): there it would hold up what is sent after it.
            # It waits with the late ones, served from spare room. (An engine seen to keep its
            # decodes' pace, a slack-ordered planner such as LENS, gets it at once.)
            r.hopeless = True
            self._hopeless.append((self._keyed(r, out).key, r.prompt, r))
            self._reqs[req.id] = r
            return None
        if best >= 0 and not (
            hits is not None
            and self.holds
            and wait_best >= 0
            and wait_t < best_t
            and hits[wait_best] - hits[best] >= 0.25 * P
        ):
            self._bind(r, best, now, best_kv)
            return best
        # (an engine without room now that holds much more of its prefix would still serve it
        # sooner: it waits at the router for that engine, which _waits_for_home keeps it for)
        if not self.holds:
            self._bind(r, wait_best, now, wait_kv)
            return wait_best
        self._hold(self._keyed(r, out))
        return None

    def _pace_room(self, e: EngineState, req: RequestInfo, now: float, base: float) -> bool:
        """hold_for_pace's room in route(): within its pacing slack, its backlog's limit and
        the TPOT cap (the request's decode step there, `base`)."""
        cfg = self.cfg
        paced = e.paced
        return (
            (not paced or e.V <= now + cfg.slack)
            and e.U <= now + (cfg.queue_limit if paced else cfg.self_paced_queue)
            and base <= req.slo_tpot * cfg.tpot_margin * (1.0 - cfg.min_share)
        )

    def _held_wait(self, r: ReqState) -> float:
        """Rough wait behind the held requests that come first: their work over the cluster's."""
        work = 0.0
        for key, _, h in self._held:
            if key > r.key:
                break
            work += h.prompt
        if work == 0.0:
            return 0.0
        return work / sum(1.0 / max(e.c0, 1e-9) for e in self._eng)

    def _hold(self, r: ReqState) -> None:
        self._seq += 1
        bisect.insort(self._held, (r.key, self._seq, r))
        self._reqs[r.info.id] = r

    def _bind(self, r: ReqState, idx: int, now: float, kv: float | None = None) -> None:
        """Send r to engine `idx` (`kv`: the KV it adds there, if route() has it: e.kv_need(r))."""
        # Per request: EngineState.prefill_time / prefill_work, _share and _router_paced inlined
        # (the same arithmetic in the same order, so the same floats).
        e = self._eng[idx]
        base = e.base + e.c2 + e.c3 * r.ctx
        h = r.hits
        hit = h[idx] if h is not None and idx < len(h) else 0
        p = r.prompt - hit
        w = e.c0 * p + e.c1 * p * (hit + p * 0.5)  # its prefill compute (prefill_work)
        busy = e.n + e.rn
        work = (w / e.pi if busy and base > e.c4 else w) + base  # prefill_time
        info = r.info
        if info.prefix_hashes and self.cfg.prefix_aware:
            self._prefix.add(idx, info.prefix_hashes)
        r.engine = idx
        r.bound = now
        paced = e.paced  # _router_paced(e)
        u = e.U if e.U > now else now
        r.end = u + work
        if paced or u + work <= r.deadline:
            r.work = work
            e.U = u + work
            if not paced:
                e.du += work
        else:
            # An engine that orders its queue by TTFT slack (LENS) serves this request, which
            # cannot meet its TTFT there, only from spare time: it delays no one else's TTFT.
            r.work = 0.0
        if paced:
            # pacing counts prefill compute; the decodes' own time is what the share protects
            # (_share: the prefill share of wall time that keeps decodes within the TPOT cap)
            if busy == 0:
                share = 1.0
            else:
                share = max(self.cfg.min_share, 1.0 - base / (info.slo_tpot * self.cfg.tpot_margin))
            r.pace = w / share
            e.V = (e.V if e.V > now else now) + r.pace
            e.dv += r.pace
        else:
            r.pace = 0.0
        e.add(r, kv)
        self._reqs[info.id] = r

    def pull(self, idx: int, engines: Sequence[EngineView], now: float) -> list[RequestInfo]:
        if not self._held and not self._hopeless:
            return []
        e = self._engine(idx)
        out: list[RequestInfo] = []
        held = self._held
        margin = self.cfg.ttft_margin
        while self._hopeless:
            # Late requests past their age limit leave in arrival order, each to the engine that
            # would serve it soonest, pacing or not (as the router would without PRISM): pacing
            # them would drain a backlog of them slower than vLLM's own batching does.
            k = self._oldest_aged(e, now)
            if k < 0:
                break
            r = self._hopeless[k][2]
            if self._ttft(e, r, now) > self._best_any(r, engines, now) + 1e-3:
                break  # another engine serves the oldest sooner: it takes it when asked
            del self._hopeless[k]
            self._bind(r, idx, now)
            out.append(r.info)
        if out:
            return out
        while held:
            pick = -1
            j = seen = 0
            while j < len(held) and seen < self.cfg.scan:
                r = held[j][2]
                if r.hits is not None:  # what the engines hold has changed since it came
                    r.hits = self._hits(r.info, len(self._eng))
                if now + self._best_prefill(r) * margin > r.deadline:
                    # cannot meet its TTFT on any engine any more: serve it only from spare room
                    r.hopeless = True
                    del held[j]
                    self._hopeless.append((r.key, r.prompt, r))
                    continue
                seen += 1
                if (
                    self._room(e, r, now)
                    and now + self._ttft(e, r, now) * margin <= r.deadline
                    and not self._waits_for_home(r, idx, now)
                ):
                    pick = j
                    break
                j += 1
            if pick < 0:
                break
            r = held.pop(pick)[2]
            self._bind(r, idx, now)
            out.append(r.info)
        if out:
            return out
        idle = e.n + e.rn == 0
        if self._hopeless and (idle or (e.V <= now and not held)):
            # spare room, and nothing that can still make its SLO is waiting for this engine;
            # an idle engine always takes one, whatever its pacing clock says (else a late list
            # could wait for good once nothing else happens)
            k = self._pick_hopeless(e)
            if k >= 0:
                r = self._hopeless.pop(k)[2]
                self._bind(r, idx, now)
                out.append(r.info)
        elif held and e.n + e.rn == 0 and e.U <= now:
            # an idle engine takes the head of the queue even if the model calls it too slow:
            # the model may be wrong, and nothing may wait forever
            r = held.pop(0)[2]
            self._bind(r, idx, now)
            out.append(r.info)
        return out

    def _waits_for_home(self, r: ReqState, idx: int, now: float) -> bool:
        """Whether held r should rather wait for the engine holding much more of its prefix:
        sent here it would recompute that prefix (work every other request then waits behind),
        and its home is predicted to still serve it within its TTFT SLO, with `slack` to spare."""
        h = r.hits
        if h is None or not self.cfg.prefix_aware:
            return False
        home = max(range(len(h)), key=h.__getitem__)
        if home == idx or h[home] - (h[idx] if idx < len(h) else 0) < 0.25 * r.prompt:
            return False
        eh = self._eng[home]
        return now + self._ttft(eh, r, now) * self.cfg.ttft_margin + self.cfg.slack <= r.deadline

    def _oldest_aged(self, e: EngineState, now: float) -> int:
        """The oldest late request past its age limit that this engine can hold, or -1."""
        lim = self.cfg.age_limit
        best, best_t = -1, INF
        for k, (_, p, r) in enumerate(self._hopeless[:64]):
            a = r.info.arrival
            if a < best_t and now - a > lim * r.info.slo_ttft and p < e.kv_tokens:
                best, best_t = k, a
        return best

    def _pick_hopeless(self, e: EngineState) -> int:
        """The smallest late request this engine can hold (among the oldest few)."""
        best, best_p = -1, 1 << 62
        for k, (_, p, _) in enumerate(self._hopeless[:64]):
            if p < e.kv_tokens and p < best_p:
                best, best_p = k, p
        return best

    def cancel(self, req_id: object) -> bool:
        r = self._reqs.get(req_id)
        if r is None or r.engine >= 0:
            return False
        for lst in (self._held, self._hopeless):
            for k, item in enumerate(lst):
                if item[2] is r:
                    del lst[k]
                    del self._reqs[req_id]
                    return True
        return False

    def on_first_token(self, req_id: object, idx: int, now: float) -> None:
        r = self._reqs.get(req_id)
        if r is not None and not r.first:
            r.first = True
            if r.engine >= 0 and req_id in self._eng[r.engine].flights:
                self._eng[r.engine].unfirst -= 1

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        r = self._reqs.pop(req_id, None)
        if r is not None and r.engine >= 0:
            self._eng[r.engine].drop(r)

    def on_end(self, req_id: object, idx: int, now: float, output_tokens: int | None) -> None:
        # on_output then on_finish, with one look-up of the request (every request ends here)
        r = self._reqs.pop(req_id, None)
        if output_tokens is not None:
            self.lengths.observe(output_tokens, r.info.max_tokens if r is not None else None)
        if r is not None and r.engine >= 0:
            self._eng[r.engine].drop(r)

    @property
    def held(self) -> int:
        return len(self._held) + len(self._hopeless)
