"""Liveness: every request ends, finished or failed with a reason. One regression test per
stranding found in issue 9 (each fails on efdc128), and admission refusal of what no engine holds."""

from __future__ import annotations

from nexussched.engine_sched import make_engine_policy
from nexussched.engine_sched.policies import LensPolicy
from nexussched.router.policies import make_policy
from nexussched.router.policies.base import RequestInfo
from nexussched.router.policies.prism import Prism
from nexussched.sim import ClusterSim, EngineSim, SimRequest, get_profile, parse_cluster
from nexussched.traces import Trace, TraceRequest


def _ended(r: SimRequest) -> bool:
    return r.finish == r.finish or getattr(r, "failure", None) is not None


def _run(cluster: str, policy: str, engine: str, reqs: list[tuple[float, int, int]], **kw):
    sim = ClusterSim(
        parse_cluster(cluster),
        make_policy(policy, **kw),
        lambda i, n: make_engine_policy(engine, engine_name=n, slo_ttft=2.0, slo_tpot=0.1, seed=i),
    )
    trace = Trace(
        "t",
        [TraceRequest(id=i, arrival=a, prompt_tokens=p, output_tokens=o)
         for i, (a, p, o) in enumerate(reqs)],
    )  # fmt: skip
    res = sim.run(trace, 2.0, 0.1)
    return res, [r for r in res.requests if not _ended(r)]


def test_lens_plan_that_leaves_nothing_runnable_falls_back_to_preempting():
    # Two long prompts partly prefilled hold every KV block of an l4 and no decode runs: LENS's
    # plan can give neither a chunk (no free block) and never preempts. vLLM's schedule preempts
    # the later one, so the engine must go on instead of idling for good.
    eng = EngineSim(get_profile("l4"), policy=LensPolicy(engine_name="l4"))
    total = eng.total_blocks
    a = SimRequest(0, 0.0, 40000, 8, 2.0, 0.1)
    b = SimRequest(1, 0.0, 40000, 8, 2.0, 0.1)
    for r, blocks in ((a, total // 2), (b, total - total // 2)):
        r.computed = blocks * eng.block_size
        r.blocks = blocks
        eng.running.append(r)
    eng.free_blocks = 0
    now, steps = 0.0, 0
    while eng.running or eng.waiting:
        end = eng.start_step(now)
        assert end is not None, f"engine idles with {len(eng.running)} running, work left"
        eng.finish_step()
        now, steps = end, steps + 1
        assert steps < 10_000
    assert _ended(a) and _ended(b) and a.generated == 8 and b.generated == 8
    assert getattr(eng, "fallbacks", 1) >= 1
    assert eng.free_blocks == total


def test_prism_late_list_is_drained_by_an_idle_engine():
    # A huge prompt moves PRISM's pacing clock far ahead; the small requests behind it turn late
    # (hopeless) while held. Once the engine is idle, it must take them whatever the clock says.
    reqs = [(0.0, 100_000, 50)] + [(0.1 + 0.01 * i, 500, 20) for i in range(5)]
    res, stranded = _run("a100:1", "prism", "vllm_default", reqs)
    assert stranded == []
    assert all(r.finish == r.finish for r in res.requests)


def test_prism_pull_on_an_idle_engine_takes_a_late_request():
    p = Prism(hold_for_pace=True)  # holding for pace is what makes the small one wait

    class V:  # the information contract's attributes (router/policies/view.py)
        name, healthy, num_running, num_waiting, kv_usage, inflight = "e", True, 0, 0, 0.0, 0
        last_scrape, block_size, num_gpu_blocks = 0.0, 16, 30_000
        inflight_prompt_tokens = inflight_max_tokens = 0

    views = [V()]
    big = RequestInfo(0, 100_000, 10, 0.0, 2.0, 0.1)
    small = RequestInfo(1, 100, 10, 0.01, 2.0, 0.1)
    assert p.route(big, views, 0.0) == 0
    assert p.route(small, views, 0.01) is None  # held: the engine's pacing clock is far ahead
    p.on_finish(0, 0, 5.0)  # the big one is done; the engine is idle, its clock still ahead
    assert p._engine(0).V > 5.0
    got = p.pull(0, views, 5.0)
    assert [r.id for r in got] == [1] and p.held == 0


def test_fastdeploy_local_never_blocks_behind_a_prompt_larger_than_an_l4():
    # The front balancer's turn for the l4 falls on a 50k-token prompt, larger than its KV cache
    # (46,224 tokens): queued there, it would block that queue for good.
    reqs = [(0.0, 100, 10), (0.1, 50_000, 10)] + [(0.2 + 0.1 * i, 200, 10) for i in range(20)]
    res, stranded = _run("a100:1,l4:1", "local", "vllm_default", reqs)
    assert stranded == []
    big = res.requests[1]
    assert big.finish == big.finish and big.engine_name.startswith("a100")  # handed over
    assert all(r.finish == r.finish for r in res.requests)


def test_fastdeploy_local_refuses_a_queued_head_its_engine_can_never_admit():
    from nexussched.router.policies.fastdeploy_modes import FastDeployLocal

    class V:
        def __init__(self, name: str, blocks: int) -> None:
            self.name, self.healthy, self.num_running, self.num_waiting = name, True, 0, 0
            self.kv_usage, self.inflight, self.block_size = 0.0, 0, 16
            self.num_gpu_blocks = blocks
            self.last_scrape, self.inflight_prompt_tokens, self.inflight_max_tokens = 0.0, 0, 0

    pol = FastDeployLocal()
    views = [V("small", 100)]
    pol._ensure(1)
    pol.queues[0].append(RequestInfo(7, 5000, 10, 0.0, 2.0, 0.1))  # queued before we knew
    pol.queues[0].append(RequestInfo(8, 100, 10, 0.0, 2.0, 0.1))
    assert [r.id for r in pol.pull(0, views, 0.0)] == [8]
    dropped = pol.take_dropped()
    assert [(d.req_id, d.reason) for d in dropped] == [(7, "rejected")]


def test_splitwise_refuses_a_request_that_outgrows_its_decode_node():
    # 45,000 prompt + 2,000 output tokens outgrow the l4 decode node's 46,224-token KV cache: it
    # would idle behind that request for good, with everything routed to it waiting too.
    reqs = [(0.0, 45_000, 2000)] + [(0.5 + 0.1 * i, 200, 10) for i in range(20)]
    res, stranded = _run("a100:1,l4:1", "splitwise", "vllm_default", reqs)
    assert stranded == []
    big = res.requests[0]
    assert big.finish != big.finish and big.failure == "rejected" and "decode" in big.error
    assert all(r.finish == r.finish for r in res.requests[1:])


def test_a_prompt_no_engine_can_hold_is_refused_at_admission_naming_both_sizes():
    reqs = [(0.0, 60_000, 10), (0.1, 200, 10)]
    for policy in ("round_robin", "prism", "local", "splitwise"):
        res, stranded = _run("l4:2", policy, "vllm_default", reqs)
        big, small = res.requests
        assert stranded == [] and small.finish == small.finish
        assert big.failure == "rejected"
        assert "60000" in big.error and "46224" in big.error, big.error
    # and beyond max_model_len (prompt + the declared max_tokens, 4096 by default, as vLLM
    # checks it: the true output of 2000 would have fit), also naming both
    res, _ = _run("a100:1", "round_robin", "vllm_default", [(0.0, 127_000, 2000)])
    r = res.requests[0]
    assert r.failure == "rejected" and "131096" in r.error and "131072" in r.error, r.error


# ---- the live router refuses what no backend can hold ------------------------------------------
def _post(url: str, body: dict) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_live_router_refuses_a_prompt_no_backend_can_hold(spawn_module):
    import json
    import time
    import urllib.request

    l4 = spawn_module("engine-sim", "--profile", "l4", "--time-scale", "0.01")
    router = spawn_module("router", "--backend", l4.url, "--scrape-interval", "0.1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until the router has scraped the engine's sizes
        with urllib.request.urlopen(router.url + "/backends", timeout=5) as r:
            b = json.loads(r.read())["backends"][0]
        if b["healthy"] and b["num_gpu_blocks"]:
            break
        time.sleep(0.05)
    model = "sim-llama-3-8b"
    # 50,000 prompt tokens: more than the l4's 46,224-token KV cache and context length
    status, body = _post(router.url, {"model": model, "prompt": [7] * 50_000, "max_tokens": 4})
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert "50004" in err["message"] and "46224" in err["message"], err["message"]
    # what fits is served
    status, body = _post(router.url, {"model": model, "prompt": [7] * 100, "max_tokens": 4})
    assert status == 200 and body["usage"]["completion_tokens"] == 4
