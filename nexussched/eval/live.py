"""Live replay: send a trace to any OpenAI-compatible endpoint and measure what clients see.

Each request goes out at its (scaled) arrival time as a streaming `/v1/completions` call whose
prompt is a list of `prompt_tokens` token ids (exact on vLLM and engine-sim; for `endpoint="chat"`
a text of about that many tokens), with `ignore_eos`.

Declared versus true length (`max_tokens`): a client does not know how long its answer will be,
so by default (`cap:4096`) every request declares `max_tokens = 4096`, and the trace's recorded
length (cut at the cap) travels separately in `vllm_xargs.nexussched_output_tokens`. That field is
test-only: engine-sim stops the request there, and the router forwards `vllm_xargs` unread, so
router policies and the engine's planner see only the declared cap while the engine still does
the trace's work. A real vLLM ignores the field and would generate all 4096 tokens: replay against
vLLM with `max_tokens="exact"` (`--max-tokens exact`), which declares each request's true length
(the ablation in which clients know their output lengths). Measured as vLLM's benchmark does, from the moment the request is
sent: TTFT at the first chunk with content, TPOT = (E2E - TTFT) / (tokens - 1), the largest gap
between content chunks (max ITL) and E2E at the end of the stream. Results are RequestOutcome
records, the same the simulated replay produces, so `summarize()` reports both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable

import aiohttp

from ..sim.request import MAX_TOKENS_DEFAULT, OUTPUT_TOKENS_XARG, declare, parse_max_tokens
from ..traces.transform import scale_rate
from ..traces.types import Trace, TraceRequest
from .metrics import RequestOutcome

_TOKEN_BASE = 1000  # token ids used for prompts: small, valid in any real vocabulary
_TOKEN_SPAN = 20000


def _base_url(url: str) -> str:
    u = url.strip().rstrip("/")
    return u[:-3] if u.endswith("/v1") else u


def _prompt_ids(r: TraceRequest) -> list[int]:
    """Token ids for r's prompt. Where the trace names its content (prefix_hashes), equal
    hashes give equal tokens, so the engine's prefix cache sees the trace's shared prefixes;
    the rest is unique to the request."""
    n = max(1, r.prompt_tokens)
    out: list[int] = []
    h = 0x9E3779B9
    P = max(1, r.prefix_block)
    for src in r.prefix_hashes:
        if len(out) >= n:
            break
        h = hash((h, src))  # chained: a block's tokens depend on its whole prefix
        seed = h % 1_000_003
        out.extend(_TOKEN_BASE + (seed + k * 31) % _TOKEN_SPAN for k in range(min(P, n - len(out))))
    seed = (int(r.id) * 7919 if isinstance(r.id, int) else 0) + 17
    k0 = len(out)
    out.extend(_TOKEN_BASE + (seed + k * 37) % _TOKEN_SPAN for k in range(n - k0))
    return out


def _prompt_text(r: TraceRequest) -> str:
    """About prompt_tokens tokens of text (4 characters each), shared prefixes as in
    _prompt_ids."""
    return "".join(f"{t % 10000:04d}" for t in _prompt_ids(r))


def _http_failure(status: int, code: object) -> str:
    """Failure kind of an HTTP error answer (eval/metrics.py's FAILURE_KINDS)."""
    if status == 429 and code == "slo_unattainable":
        return "shed"  # PRISM's admission control
    if 400 <= status < 500:
        return "rejected"  # bad or too-large request, a full queue
    return "error"


def _failed(
    r: TraceRequest,
    arrival: float,
    slo: tuple[float, float],
    error: str,
    tokens: int = 0,
    ttft: float = math.nan,
    failure: str = "error",
) -> RequestOutcome:
    return RequestOutcome(
        id=r.id,
        arrival=arrival,
        prompt_tokens=r.prompt_tokens,
        output_tokens=tokens,
        ttft=ttft,
        tpot=math.nan,
        e2e=math.nan,
        max_itl=0.0,
        slo_ttft=slo[0],
        slo_tpot=slo[1],
        completed=False,
        error=error,
        failure=failure,
    )


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    r: TraceRequest,
    model: str,
    chat: bool,
    slo: tuple[float, float],
    send_slo: bool,
    t_start: float,
    extra_headers: dict[str, str],
    client_timeout: float | None = None,
    cap: int | None = None,
) -> RequestOutcome:
    """One request; a client_timeout (s) without a first token makes the client give up: it
    closes the connection (the router and engine abort the request, freeing its KV). `cap`: the
    max_tokens every request declares (None: its true length)."""
    out, declared = declare(r.output_tokens, cap)
    body: dict = {
        "model": model,
        "max_tokens": declared,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if declared != out:
        body["vllm_xargs"] = {OUTPUT_TOKENS_XARG: out}
    if chat:
        body["messages"] = [{"role": "user", "content": _prompt_text(r)}]
    else:
        body["prompt"] = _prompt_ids(r)
    headers = dict(extra_headers)
    if send_slo:
        headers["x-slo-ttft-ms"] = f"{slo[0] * 1000:g}"
        headers["x-slo-tpot-ms"] = f"{slo[1] * 1000:g}"
    if r.priority:
        headers["x-priority"] = str(r.priority)
    t_send = time.monotonic()
    arrival = t_send - t_start
    first = last = math.nan
    chunks = 0
    max_itl = 0.0
    usage_tokens: int | None = None
    done = False
    deadline = asyncio.timeout(client_timeout) if client_timeout else None
    try:
        async with (
            deadline or contextlib.nullcontext(),
            session.post(url, data=json.dumps(body), headers=headers) as resp,
        ):
            if resp.status != 200:
                text = await resp.text()
                code = None
                try:
                    err = json.loads(text)["error"]
                    msg, code = err["message"], err.get("code")
                except (ValueError, KeyError, TypeError, AttributeError):
                    msg = text[:200]
                kind = _http_failure(resp.status, code)
                return _failed(r, arrival, slo, f"HTTP {resp.status}: {msg}", failure=kind)
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                obj = json.loads(data)
                if obj.get("error"):
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    return _failed(r, arrival, slo, f"stream error: {msg}", chunks, first - t_send)
                choices = obj.get("choices")
                if choices:
                    c = choices[0]
                    text = c.get("delta", {}).get("content") if chat else c.get("text")
                    if text:
                        now = time.monotonic()
                        if chunks:
                            gap = now - last
                            if gap > max_itl:
                                max_itl = gap
                        else:
                            first = now
                            if deadline is not None:
                                deadline.reschedule(None)  # it got its first token in time
                        last = now
                        chunks += 1
                u = obj.get("usage")
                if isinstance(u, dict) and u.get("completion_tokens") is not None:
                    usage_tokens = int(u["completion_tokens"])
    except TimeoutError as e:
        if deadline is not None and deadline.expired() and not chunks:
            return _failed(
                r,
                arrival,
                slo,
                f"client gave up after {client_timeout:g}s without a first token",
                failure="timeout",
            )
        return _failed(r, arrival, slo, f"{type(e).__name__}: {e}", chunks, first - t_send)
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return _failed(r, arrival, slo, f"{type(e).__name__}: {e}", chunks, first - t_send)
    t_end = time.monotonic()
    if not done or not chunks:
        return _failed(
            r,
            arrival,
            slo,
            "stream ended before [DONE]" if not done else "no output tokens",
            chunks,
            first - t_send,
        )
    n = usage_tokens if usage_tokens is not None else chunks
    ttft = first - t_send
    e2e = t_end - t_send
    tpot = (e2e - ttft) / (n - 1) if n > 1 else 0.0
    return RequestOutcome(
        id=r.id,
        arrival=arrival,
        prompt_tokens=r.prompt_tokens,
        output_tokens=n,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        max_itl=max_itl,
        slo_ttft=slo[0],
        slo_tpot=slo[1],
        completed=True,
    )


async def replay_live(
    url: str,
    trace: Trace,
    model: str | None,
    slo_ttft: float,
    slo_tpot: float,
    *,
    time_scale: float = 1.0,
    rate: float | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    progress: Callable[[int], None] | bool | None = None,
    endpoint: str = "completions",
    send_slo_headers: bool = True,
    timeout: float = 600.0,
    client_timeout: float | None = None,
    max_tokens: str = MAX_TOKENS_DEFAULT,
) -> list[RequestOutcome]:
    """Replay `trace` against the OpenAI endpoint at `url` (base URL, with or without /v1).

    rate: rescale arrivals to this mean rate (requests/s) first; time_scale: wall seconds per
    trace second after that (0: send everything at once). concurrency: most requests in flight
    (later ones wait; their TTFT counts from when they are sent). Per-request SLOs (the trace's,
    else the defaults) go out as `x-slo-ttft-ms` / `x-slo-tpot-ms` headers. Failures (HTTP errors,
    broken streams, connection errors) come back as outcomes with `completed=False` and `error`.
    Outcomes are in trace order. model None: the first model the endpoint lists. progress: a
    callable given the number of requests just finished, or True for a progress bar.
    client_timeout: seconds a client waits for its first token before it disconnects (the
    request then fails as "timeout"; the router aborts it at its engine, freeing its KV).
    max_tokens: what each request declares, `cap:N` or `exact` (see the module docstring).
    """
    if client_timeout is not None and not (client_timeout > 0 and math.isfinite(client_timeout)):
        raise ValueError(f"client_timeout must be positive, got {client_timeout!r}")
    cap = parse_max_tokens(max_tokens)
    if endpoint not in ("completions", "chat"):
        raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
    if not (time_scale >= 0 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be >= 0, got {time_scale!r}")
    if concurrency is not None and concurrency <= 0:
        raise ValueError(f"concurrency must be positive, got {concurrency!r}")
    if rate is not None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if trace.rate > 0:
            trace = scale_rate(trace, rate / trace.rate)
    chat = endpoint == "chat"
    target = _base_url(url) + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    reqs = trace.requests
    t0_trace = reqs[0].arrival if reqs else 0.0
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    conn = aiohttp.TCPConnector(limit=concurrency or 0, limit_per_host=0)
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(reqs), unit="req", desc="live replay", leave=False)
        progress = bar.update
    elif progress is False:
        progress = None
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        if model is None:
            model = await first_model(session, _base_url(url), headers)
        t_start = time.monotonic()

        async def run(r: TraceRequest) -> RequestOutcome:
            delay = t_start + (r.arrival - t0_trace) * time_scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            slo = (
                r.slo_ttft if r.slo_ttft is not None else slo_ttft,
                r.slo_tpot if r.slo_tpot is not None else slo_tpot,
            )
            async with sem or contextlib.nullcontext():
                out = await _one(
                    session,
                    target,
                    r,
                    model,
                    chat,
                    slo,
                    send_slo_headers,
                    t_start,
                    headers,
                    client_timeout,
                    cap,
                )
            if progress is not None:
                progress(1)
            return out

        try:
            return list(await asyncio.gather(*(run(r) for r in reqs)))
        finally:
            if bar is not None:
                bar.close()


async def first_model(session: aiohttp.ClientSession, base: str, headers: dict) -> str:
    """The first model id the endpoint's /v1/models lists (ValueError, one line, if none)."""
    try:
        async with session.get(base + "/v1/models", headers=headers) as r:
            data = await r.json(content_type=None) if r.status == 200 else {}
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
        raise ValueError(
            f"cannot list models at {base}/v1/models: {type(e).__name__}: {e}"
        ) from None
    ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
    if not ids or not isinstance(ids[0], str):
        raise ValueError(f"{base}/v1/models lists no model; pass one explicitly")
    return ids[0]
