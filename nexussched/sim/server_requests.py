"""engine-sim's reading of a request: OpenAI-style errors, its deterministic token count, and the
SLO hints a router forwards (read leniently, as an engine ignores hints it cannot read)."""

from __future__ import annotations

import json
import math

from aiohttp import web

from ..tokens import message_tokens, text_tokens


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
