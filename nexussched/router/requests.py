"""Parsing and validating an OpenAI-API request body for the router (pure functions).

Bad input raises APIError (an OpenAI-style 400) naming the field; nothing here does I/O.
"""

from __future__ import annotations

import json
import math

from ..tokens import message_tokens, text_tokens
from .errors import bad_request

SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_TPOT_HEADER = "x-slo-tpot-ms"
PRIORITY_HEADER = "x-priority"
# request headers passed on to the engine (an engine-side planner reads the SLO ones)
FORWARD_HEADERS = (SLO_TTFT_HEADER, SLO_TPOT_HEADER, PRIORITY_HEADER, "x-request-id")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def _positive(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not math.isfinite(v):
        raise bad_request(
            f"{what} must be a positive number, got {v!r}", code="invalid_value", param=what
        )
    return float(v)


def _header_num(v: str, name: str) -> float:
    """A header's positive number (400 naming the header otherwise)."""
    try:
        x = float(v)
    except ValueError:
        raise bad_request(
            f"header {name} must be a number, got {v!r}", code="invalid_value"
        ) from None
    return _positive(x, name)


def parse_slo(
    headers, body: dict, default_ttft: float, default_tpot: float
) -> tuple[float, float, int]:
    """(slo_ttft s, slo_tpot s, priority) of a request.

    Headers `x-slo-ttft-ms` / `x-slo-tpot-ms` are milliseconds; body fields `slo_ttft` / `slo_tpot`
    are seconds (as in RequestInfo and traces) and take precedence; `priority` likewise (int).
    """
    ttft, tpot = default_ttft, default_tpot
    v = headers.get(SLO_TTFT_HEADER)
    if v is not None:
        ttft = _header_num(v, SLO_TTFT_HEADER) / 1000.0
    v = headers.get(SLO_TPOT_HEADER)
    if v is not None:
        tpot = _header_num(v, SLO_TPOT_HEADER) / 1000.0
    if body.get("slo_ttft") is not None:
        ttft = _positive(body["slo_ttft"], "slo_ttft")
    if body.get("slo_tpot") is not None:
        tpot = _positive(body["slo_tpot"], "slo_tpot")
    prio: object = body.get("priority")
    if prio is None:
        h = headers.get(PRIORITY_HEADER)
        if h is not None:
            try:
                prio = int(h)
            except ValueError:
                raise bad_request(
                    f"header {PRIORITY_HEADER} must be an integer, got {h!r}", code="invalid_value"
                ) from None
    if prio is None:
        prio = 0
    if isinstance(prio, bool) or not isinstance(prio, int):
        raise bad_request(
            f"priority must be an integer, got {prio!r}", code="invalid_value", param="priority"
        )
    return ttft, tpot, prio


def with_slo_xargs(body: dict, ttft: float, tpot: float, prio: int) -> bytes:
    """The body to forward when a client stated SLOs: also put them in `vllm_xargs`.

    vLLM ignores unknown top-level fields but hands `vllm_xargs` to the scheduler (as
    SamplingParams.extra_args), which is where the LENS plug-in reads per-request SLOs.
    """
    xargs = dict(body.get("vllm_xargs") or {})  # an object: validate_body checked it
    xargs.setdefault("slo_ttft", ttft)
    xargs.setdefault("slo_tpot", tpot)
    xargs.setdefault("priority", prio)
    body["vllm_xargs"] = xargs
    return json.dumps(body).encode()


def estimate_prompt_tokens(path: str, body: dict) -> int:
    """Prompt size for routing: token-id lists are exact, text is ~4 characters per token."""
    if path == CHAT:
        n = 0
        for m in body["messages"]:
            n += message_tokens(m)
        return max(1, n)
    p = body["prompt"]
    if isinstance(p, str):
        return max(1, text_tokens(p))
    if isinstance(p[0], int):
        return len(p)  # token ids (the first element decides: no per-token work here)
    n = 0
    for x in p:
        n += text_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1
    return max(1, n)


def validate_body(path: str, body: object) -> tuple[str, bool, int | None]:
    """Check the fields the router relies on; returns (model, stream, max_tokens or None)."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise bad_request(
            "you must provide a model parameter", code="missing_required_parameter", param="model"
        )
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string", code="invalid_value", param="model")
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise bad_request(
            f"vllm_xargs must be an object, got {type(xargs).__name__}",
            code="invalid_value",
            param="vllm_xargs",
        )
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise bad_request("stream must be true or false", code="invalid_value", param="stream")
    max_tokens = None
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad_request(
                f"{key} must be a positive integer, got {v!r}", code="invalid_value", param=key
            )
        max_tokens = v
    if path == CHAT:
        msgs = body.get("messages")
        if msgs is None:
            raise bad_request(
                "you must provide a messages parameter",
                code="missing_required_parameter",
                param="messages",
            )
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs)
        ):
            raise bad_request(
                "messages must be a non-empty list of {role, content} objects",
                code="invalid_value",
                param="messages",
            )
    else:
        p = body.get("prompt")
        if p is None:
            raise bad_request(
                "you must provide a prompt parameter",
                code="missing_required_parameter",
                param="prompt",
            )
        # the first element decides the kind (token ids, texts, id lists); the engine checks the rest
        ok = isinstance(p, str) or (
            isinstance(p, list)
            and p
            and not isinstance(p[0], bool)
            and isinstance(p[0], int | str | list)
        )
        if not ok:
            raise bad_request(
                "prompt must be a string, a list of strings or a list of token ids",
                code="invalid_value",
                param="prompt",
            )
    return model, stream, max_tokens
