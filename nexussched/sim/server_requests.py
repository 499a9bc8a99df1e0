"""engine-sim's reading of a request: OpenAI-style errors, the JSON body, what a completion asks
for (checked as vLLM checks it), its deterministic token count, and the SLO hints a router
forwards (read leniently, as an engine ignores hints it cannot read)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from ..tokens import message_tokens, text_tokens
from .request import OUTPUT_TOKENS_XARG
from .server_config import ServerConfig


class BadRequest(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> web.Response:
        typ = {404: "NotFoundError", 413: "RequestTooLarge"}.get(self.status, "BadRequestError")
        body = {
            "error": {
                "message": self.message,
                "type": typ,
                "param": self.param,
                "code": self.code or self.status,
            }
        }
        return web.Response(
            status=self.status, body=json.dumps(body).encode(), content_type="application/json"
        )


def count_prompt_tokens(body: dict, chat: bool) -> int:
    """The engine's deterministic tokenizer: ~4 characters per token; token ids count as given."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest(400, "messages must be a non-empty list", param="messages")
        n = 0
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(400, "each message needs a role", param="messages")
            n += message_tokens(m)
        return max(1, n)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return max(1, text_tokens(p))
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return len(p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, str | list) for x in p):
        raise BadRequest(400, "engine-sim serves one prompt per request", param="prompt")
    raise BadRequest(400, "prompt must be a string or a list of token ids", param="prompt")


def slo_hints(headers, body: dict, dttft: float, dtpot: float) -> tuple[float, float, int]:
    """Lenient: an engine ignores SLO hints it cannot read."""

    def num(v) -> float | None:
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if x > 0 and math.isfinite(x) else None

    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict):  # what a router forwards for vLLM's scheduler plug-in
        body = {**xargs, **body}
    ttft = num(body.get("slo_ttft"))
    if ttft is None:
        h = num(headers.get("x-slo-ttft-ms"))
        ttft = h / 1000.0 if h is not None else dttft
    tpot = num(body.get("slo_tpot"))
    if tpot is None:
        h = num(headers.get("x-slo-tpot-ms"))
        tpot = h / 1000.0 if h is not None else dtpot
    prio = body.get("priority", headers.get("x-priority", 0))
    try:
        prio = int(prio)
    except (TypeError, ValueError):
        prio = 0
    return ttft, tpot, prio


async def read_json(request: web.Request, limit: int) -> dict:
    """The request's body: a JSON object of at most `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"request body exceeds {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(413, f"request body exceeds {limit} bytes") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "request body must be a JSON object")
    return body


@dataclass(slots=True)
class Generation:
    """What a completion request asks of the engine, checked."""

    model: str
    stream: bool
    max_tokens: int
    prompt: int  # prompt tokens
    output: int  # tokens it will generate
    reason: str  # its finish_reason: "length" or "stop"


def parse_generation(
    body: dict, chat: bool, cfg: ServerConfig, max_model_len: int, rng: np.random.Generator
) -> Generation:
    """Check a completion request as vLLM does and draw where its output ends."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "you must provide a model parameter", param="model")
    if model not in cfg.models:
        raise BadRequest(404, f"The model `{model}` does not exist.", param="model")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest(400, "engine-sim supports n=1 only", param="n")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(400, "stream must be a boolean", param="stream")
    mt = body.get("max_tokens")
    if mt is None and chat:
        mt = body.get("max_completion_tokens")
    if mt is None:
        mt = cfg.default_max_tokens
    if isinstance(mt, bool) or not isinstance(mt, int) or mt <= 0:
        raise BadRequest(400, f"max_tokens must be at least 1, got {mt!r}.", param="max_tokens")
    prompt = count_prompt_tokens(body, chat)
    limit = max_model_len
    if prompt + mt > limit:
        raise BadRequest(
            400,
            f"This model's maximum context length is {limit} tokens. "
            f"However, you requested {prompt + mt} tokens ({prompt} in the "
            f"messages, {mt} in the completion).",
            param="max_tokens",
        )
    out, reason = mt, "length"
    if cfg.eos_mean > 0 and not body.get("ignore_eos"):
        natural = int(rng.geometric(1.0 / cfg.eos_mean))
        if natural < mt:
            out, reason = natural, "stop"
    mn = body.get("min_tokens")
    if isinstance(mn, int) and not isinstance(mn, bool) and mn > out:
        out = min(mn, mt)
        reason = "length" if out == mt else reason
    # Test-only: trace replay (eval/live.py) tells the engine where the recorded output ended,
    # so that a replayed request is as long as in the trace while every router and planner
    # sees only the declared max_tokens. Routers forward vllm_xargs unread.
    xa = body.get("vllm_xargs")
    forced = xa.get(OUTPUT_TOKENS_XARG) if isinstance(xa, dict) else None
    if forced is not None:
        if isinstance(forced, bool) or not isinstance(forced, int) or forced < 1:
            raise BadRequest(
                400,
                f"vllm_xargs.{OUTPUT_TOKENS_XARG} must be a positive integer, got {forced!r}",
                param="vllm_xargs",
            )
        out = min(forced, mt)
        reason = "length" if out == mt else "stop"
    return Generation(model, stream, mt, prompt, out, reason)
