"""Sim-to-live agreement: one trace slice through the simulator and through the live router.

The simulator side replays the slice on simulated engines of the given profiles under the live
view (what a live router knows: scraped gauges, its own counts, telemetry as it arrives). The live
side starts one engine-sim process per profile (real time, the same profiles and engine policy),
puts the live router with the same routing policy in front of them (PRISM as deployed, learning
from the engines' step telemetry), and replays the same slice through it over HTTP with the same
SLOs, declared max_tokens and client timeout. Both sides report SLO attainment; if the simulator
is a faithful stand-in for the served system they agree within a few points per policy.

Fresh engines for every policy on both sides, so no policy inherits another's caches or queues.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..localproc import free_port
from ..router.compose import create_app
from ..router.config import RouterSettings, backend_from_url
from ..router.policies import make_policy
from ..router.policy_dispatch import PolicyDispatcher
from ..router.prism_live import PrismDispatcher
from ..sim import get_profile
from ..traces import Trace
from .live import replay_live
from .metrics import summarize
from .replay import DEFAULT_CLIENT_TIMEOUT, SimSetup, simulate

MODEL = "sim-llama-3-8b"
AGREEMENT_BAR = 5.0  # points of SLO attainment, live vs simulated, per policy (issue 10)


@dataclass
class Agreement:
    policy: str
    sim: dict  # summarize() of the simulated run
    live: dict  # summarize() of the live run

    @property
    def gap(self) -> float:
        """Live minus simulated attainment, in points."""
        return 100.0 * (self.live["slo_attainment"] - self.sim["slo_attainment"])

    @property
    def agrees(self) -> bool:
        return abs(self.gap) <= AGREEMENT_BAR


def run_sim(
    trace: Trace, profiles: list[str], policy: str, slo_ttft: float, slo_tpot: float, seed: int
) -> dict:
    setup = SimSetup(
        [get_profile(p) for p in profiles],
        slo_ttft=slo_ttft,
        slo_tpot=slo_tpot,
        seed=seed,
        client_timeout=DEFAULT_CLIENT_TIMEOUT,
    )
    return simulate(trace, setup, policy).summary


class _EngineSims:
    """engine-sim processes (real time) on free ports; stopped on exit."""

    def __init__(self, profiles: list[str], seed: int) -> None:
        self.ports = [free_port() for _ in profiles]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_root(), _pp()])))
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nexussched.cli",
                    "engine-sim",
                    "--profile",
                    prof,
                    "--port",
                    str(port),
                    "--seed",
                    str(seed + k),
                    "--model",
                    MODEL,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for k, (prof, port) in enumerate(zip(profiles, self.ports, strict=True))
        ]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for u, p in zip(self.urls, self.procs, strict=True):
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"engine-sim at {u} exited ({p.returncode})")
                try:
                    with urllib.request.urlopen(u + "/health", timeout=1.0):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"engine-sim at {u} not up in {timeout:g} s") from None
                    time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pp() -> str:
    return os.environ.get("PYTHONPATH", "")


async def run_live(
    trace: Trace, profiles: list[str], policy: str, slo_ttft: float, slo_tpot: float, seed: int
) -> dict:
    from aiohttp import web

    sims = _EngineSims(profiles, seed)
    try:
        sims.wait()
        settings = RouterSettings(backends=[backend_from_url(u) for u in sims.urls])
        pol = make_policy(policy)
        disp = PrismDispatcher(pol) if policy == "prism" else PolicyDispatcher(pol)
        runner = web.AppRunner(create_app(settings, disp))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            router = runner.app["router"]
            for _ in range(300):
                if sum(b.healthy for b in router.backends) == len(profiles):
                    break
                await asyncio.sleep(0.05)
            outcomes = await replay_live(
                f"http://127.0.0.1:{port}",
                trace,
                MODEL,
                slo_ttft,
                slo_tpot,
                client_timeout=DEFAULT_CLIENT_TIMEOUT,
            )
        finally:
            await runner.cleanup()
    finally:
        sims.stop()
    return summarize(outcomes)


def sim_vs_live(
    trace: Trace,
    profiles: list[str],
    policies: list[str],
    slo_ttft: float = 2.0,
    slo_tpot: float = 0.1,
    seed: int = 0,
) -> list[Agreement]:
    """Attainment of each policy on `trace`, simulated and live (see the module docstring)."""
    out = []
    for policy in policies:
        sim = run_sim(trace, profiles, policy, slo_ttft, slo_tpot, seed)
        live = asyncio.run(run_live(trace, profiles, policy, slo_ttft, slo_tpot, seed))
        out.append(Agreement(policy, sim, live))
    return out


def agreement_table(rows: list[Agreement]) -> str:
    within = f"within {AGREEMENT_BAR:g}"
    lines = [
        f"{'policy':<12}{'sim attain':>11}{'live attain':>12}{'gap pts':>9}{within:>10}"
        f"{'sim TTFT p50':>13}{'live TTFT p50':>14}{'live failed':>12}"
    ]
    for r in rows:
        s, v = r.sim, r.live
        lines.append(
            f"{r.policy:<12}{s['slo_attainment']:>11.1%}{v['slo_attainment']:>12.1%}"
            f"{r.gap:>+9.1f}{'yes' if r.agrees else 'NO':>10}{_ms(s.get('ttft_p50')):>13}"
            f"{_ms(v.get('ttft_p50')):>14}{v.get('failed', 0):>12}"
        )
    return "\n".join(lines)


def rounds_table(rounds: list[list[Agreement]]) -> str:
    """Per policy over repeated rounds (each a fresh seed on both sides): mean and range of the
    simulated and live attainment and of the gap, and whether the mean gap is within the bar
    (with how many rounds were)."""
    by: dict[str, list[Agreement]] = {}
    for rows in rounds:
        for r in rows:
            by.setdefault(r.policy, []).append(r)
    within = f"|mean gap| <= {AGREEMENT_BAR:g}"
    lines = [
        f"{'policy':<12}{'sim attain mean [range]':>25}{'live attain mean [range]':>26}"
        f"{'gap pts mean [range]':>24}  {within} (rounds within)"
    ]
    for policy, rs in by.items():
        sim = [100.0 * r.sim["slo_attainment"] for r in rs]
        live = [100.0 * r.live["slo_attainment"] for r in rs]
        gaps = [r.gap for r in rs]
        mean_gap = sum(gaps) / len(gaps)
        ok = "yes" if abs(mean_gap) <= AGREEMENT_BAR else "NO"
        lines.append(
            f"{policy:<12}{_spread(sim, '.1f'):>25}{_spread(live, '.1f'):>26}"
            f"{_spread(gaps, '+.1f'):>24}  {ok} ({sum(r.agrees for r in rs)}/{len(rs)})"
        )
    return "\n".join(lines)


def _spread(xs: list[float], fmt: str) -> str:
    return f"{sum(xs) / len(xs):{fmt}} [{min(xs):{fmt}}, {max(xs):{fmt}}]"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"
