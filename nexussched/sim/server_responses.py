"""engine-sim's answers in vLLM's shapes: synthetic output words, the non-streaming body and the
pre-encoded pieces of a stream's SSE events."""

from __future__ import annotations

import json

from .request import SimRequest

# Synthetic output vocabulary (pre-encoded as JSON strings for the streaming hot path).
_WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or have "
    "an they which one you were all we her she there would their will when who him been has more "
    "if no out so said what up its about than into them can only other new some could time these"
).split()
TOKEN_JSON = [json.dumps(" " + w).encode() for w in _WORDS]
_TOK_TEXT = [" " + w for w in _WORDS]


def output_text(rid: int, n: int) -> str:
    """The text of request `rid`'s first n output tokens (what its stream sends, token by token)."""
    return "".join(_TOK_TEXT[(rid * 13 + j * 7) % len(_TOK_TEXT)] for j in range(n))


def completion_json(
    r: SimRequest, uid: str, created: int, model: str, reason: str, chat: bool, with_cache: bool
) -> dict:
    """A finished request's non-streaming answer, as vLLM writes it."""
    text = output_text(r.id, r.output)
    usage = {
        "prompt_tokens": r.prompt,
        "total_tokens": r.prompt + r.output,
        "completion_tokens": r.output,
        "prompt_tokens_details": {"cached_tokens": r.cached} if with_cache else None,
    }
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
        }
        obj, rid = "chat.completion", f"chatcmpl-{uid}"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj, rid = "text_completion", f"cmpl-{uid}"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def stream_frames(
    uid: str, created: int, model: str, reason: str, chat: bool
) -> tuple[str, bytes, bytes, bytes]:
    """The constant parts of a stream's SSE events: (head of every chunk, bytes before a token,
    after a token, after the last token), so the hot path only joins pre-encoded pieces."""
    rid = f"chatcmpl-{uid}" if chat else f"cmpl-{uid}"
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = (
        f'{{"id":"{rid}","object":"{obj}","created":{created},'
        f'"model":{json.dumps(model)},"choices":['
    )
    if chat:
        pre = ("data: " + head + '{"index":0,"delta":{"content":').encode()
        mid = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        last = ('},"logprobs":null,"finish_reason":"' + reason + '"}]}\n\n').encode()
    else:
        pre = ("data: " + head + '{"index":0,"text":').encode()
        mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
        last = (
            ',"logprobs":null,"finish_reason":"' + reason + '","stop_reason":null}]}\n\n'
        ).encode()
    return head, pre, mid, last
