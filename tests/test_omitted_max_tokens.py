"""A request that omits max_tokens declares what vLLM will allow it: the context window left
after the prompt (chat) or 16 within that window (completions), not a fixed guess. Admission and
the policies' length estimates (the backend's declared tokens in flight) see that bound."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from nexussched.router.admission import (
    CHAT_DEFAULT_MAX_TOKENS,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    implied_max_tokens,
)
from nexussched.tokens import message_tokens

MODEL = "sim-llama-3-8b"
MML = 2048  # the engine's --max-model-len


def _chat_of(tokens: int) -> list[dict]:
    """One user message the engine and the router both count as `tokens` prompt tokens."""
    msg = {"role": "user", "content": "x" * (4 * (tokens - 4))}
    assert message_tokens(msg) == tokens
    return [msg]


def _post(url: str, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _backend(router_url: str) -> dict:
    with urllib.request.urlopen(router_url + "/backends", timeout=5) as r:
        return json.loads(r.read())["backends"][0]


def _router_for(spawn, *engine_args: str):
    eng = spawn("engine-sim", "--max-model-len", str(MML), *engine_args)
    router = spawn("router", "--backend", eng.url, "--scrape-interval", "0.1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until the router has the engine's card and sizes
        b = _backend(router.url)
        if b["healthy"] and b["num_gpu_blocks"]:
            return router
        time.sleep(0.05)
    raise AssertionError(f"router never saw the engine healthy: {b}")


def test_implied_max_tokens_follows_vllm():
    # chat: the window left after the prompt; completions: 16, within that window
    assert implied_max_tokens(True, 1900, 2048) == 148
    assert implied_max_tokens(False, 1900, 2048) == COMPLETIONS_DEFAULT_MAX_TOKENS
    assert implied_max_tokens(False, 2040, 2048) == 8
    # no backend told its max_model_len yet: the documented defaults
    assert implied_max_tokens(True, 1900, None) == CHAT_DEFAULT_MAX_TOKENS
    assert implied_max_tokens(True, 1900, None, chat_default=77) == 77
    assert implied_max_tokens(False, 1900, None) == COMPLETIONS_DEFAULT_MAX_TOKENS
    # a prompt that fills the window declares 1, so admission refuses it as vLLM does
    assert implied_max_tokens(True, 2048, 2048) == 1
    assert implied_max_tokens(False, 5000, 2048) == 1


def test_a_chat_prompt_near_the_window_without_max_tokens_is_served(spawn):
    router = _router_for(spawn, "--time-scale", "0.01")
    # 1,900 prompt tokens leave 148 of the 2,048-token window: vLLM serves it. A fixed guess of
    # 256 (the router's old default) would refuse it at admission.
    status, body = _post(
        router.url, "/v1/chat/completions", {"model": MODEL, "messages": _chat_of(1900)}
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == 1900
    # a prompt past the window is refused at the router, naming the window
    status, body = _post(
        router.url, "/v1/chat/completions", {"model": MODEL, "messages": _chat_of(2100)}
    )
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "context_length_exceeded", err
    assert "2101" in err["message"] and str(MML) in err["message"], err["message"]
    # completions: 16 fits beside 2,000 prompt tokens, so it is served
    status, body = _post(router.url, "/v1/completions", {"model": MODEL, "prompt": [7] * 2000})
    assert status == 200 and body["usage"]["completion_tokens"] == 16, body


def test_declared_tokens_in_flight_are_what_vllm_would_allow(spawn):
    # a real-time engine that runs long answers, so both requests are still in flight when read
    router = _router_for(spawn, "--time-scale", "1", "--default-max-tokens", "1500")
    chat = urllib.request.Request(
        router.url + "/v1/chat/completions",
        data=json.dumps({"model": MODEL, "messages": _chat_of(100), "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    comp = urllib.request.Request(
        router.url + "/v1/completions",
        data=json.dumps({"model": MODEL, "prompt": [7] * 100, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with (
        urllib.request.urlopen(chat, timeout=30) as c1,
        urllib.request.urlopen(comp, timeout=30) as c2,
    ):
        assert c1.readline().startswith(b"data:") and c2.readline().startswith(b"data:")
        b = _backend(router.url)
        assert b["inflight"] == 2, b
        assert b["inflight_prompt_tokens"] == 200, b
        # chat: 2,048 - 100; completions: vLLM's 16
        assert b["inflight_max_tokens"] == (MML - 100) + COMPLETIONS_DEFAULT_MAX_TOKENS, b
