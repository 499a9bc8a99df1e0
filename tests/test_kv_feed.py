"""The live router follows engine-sim's KV events: PRISM's prefix index is the engine's cache."""

from __future__ import annotations

import json

import aiohttp

from nexussched.router.policies import Prism
from nexussched.router.policy_dispatch import PolicyDispatcher
from nexussched.tokens import block_hashes, prompt_pieces
from tests.test_prism_live import MODEL, start_router, wait_healthy

BLOCKS = 200  # the engine's KV cache: 3,200 tokens, so four 1,000-token prompts evict


async def _complete(s: aiohttp.ClientSession, url: str, prompt: list[int]) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "ignore_eos": True}
    async with s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200
        return await r.json()


async def _engine_cache(s: aiohttp.ClientSession, url: str) -> set[int]:
    """The engine's cached blocks, from its whole KV-event history."""
    async with s.get(url + "/kv_events", params={"since": "0"}) as r:
        lines = (await r.text()).splitlines()
    held: set[int] = set()
    for line in lines:
        ev = json.loads(line)
        if ev["type"] == "BlockStored":
            held.update(ev["block_hashes"])
        else:
            held.difference_update(ev["block_hashes"])
    return held


async def _run(spawn, follow: bool) -> tuple[Prism, PolicyDispatcher, set[int], int, int]:
    eng = spawn("engine-sim", "--time-scale", "0", "--num-blocks", str(BLOCKS))
    policy = Prism(kv_events=follow)
    disp = PolicyDispatcher(policy)
    server = await start_router([eng.url], disp)
    prompts = [[40000 + 1000 * i + k for k in range(1000)] for i in range(4)]
    first = block_hashes(prompt_pieces({"prompt": prompts[0]}, False))
    try:
        await wait_healthy(server, 1)
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            for p in prompts:
                await _complete(s, url, p)
            if disp.kv_feed is not None:
                await disp.kv_feed.poll_once()  # caught up with every event so far
            truth = await _engine_cache(s, eng.url)
            predicted = policy._prefix.match(first, 1)[0] * 16
            # the first prompt again, straight to the engine: what it really still holds of it
            again = await _complete(s, eng.url, prompts[0])
    finally:
        await server.close()
    real = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    return policy, disp, truth, predicted, real


async def test_prism_index_follows_the_engines_kv_events_live(spawn):
    policy, disp, truth, predicted, real = await _run(spawn, True)
    assert disp.kv_feed is not None and disp.kv_feed.events > 0
    assert policy._kv_fed == {0}
    assert set(policy._prefix._lru[0]) == truth  # the index is the engine's cache, block for block
    assert 0 < real < 1000  # the engine evicted part of the first prompt, not all of it
    assert predicted == real  # so PRISM predicts its prefix-cache hit exactly


async def test_without_kv_events_the_index_is_a_guess(spawn):
    policy, disp, truth, predicted, real = await _run(spawn, False)
    assert disp.kv_feed is None and policy._kv_fed == set()
    assert 0 < real < 1000
    assert predicted != real  # the LRU of what was sent where misses what the engine kept
