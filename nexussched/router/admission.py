"""Admission by size: refuse what no backend could ever hold, as vLLM would, but before routing.

A request whose prompt + max_tokens exceeds every backend's max_model_len (from its /v1/models
card), or whose prompt exceeds every backend's KV cache (vllm:cache_config_info: num_gpu_blocks x
block_size), can never be served. Sent anyway, it would fail at its backend or, behind a holding
policy, wait for good. The router answers 400 `context_length_exceeded`, naming both sizes, as the
simulator refuses it at admission. Backends that have not told their sizes yet are assumed to fit.

A request that omits max_tokens declares what vLLM would give it (`implied_max_tokens`), so that
this check and the routing policies' length estimates see the bound the engine will enforce, not
a guess.
"""

from __future__ import annotations

from collections.abc import Iterable


def backend_limits(backend: object, model: str) -> tuple[int | None, int | None]:
    """(max_model_len for `model`, KV cache tokens) a backend has told us; None where unknown."""
    mml = None
    for card in getattr(backend, "model_cards", ()) or ():
        if isinstance(card, dict) and card.get("id") == model:
            v = card.get("max_model_len")
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                mml = v
    blocks = getattr(backend, "num_gpu_blocks", None)
    bs = getattr(backend, "block_size", None)
    kv = int(blocks) * int(bs) if blocks and bs else None
    return mml, kv


# vLLM's /v1/completions default (CompletionRequest.max_tokens = 16, OpenAI's), capped like every
# request at the context window left after the prompt (vllm/entrypoints/utils.py get_max_tokens)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# a chat request that omits max_tokens may run to max_model_len - prompt; until a backend has told
# its max_model_len the router declares this many (the simulator's default declaration, cap:4096)
CHAT_DEFAULT_MAX_TOKENS = 4096


def largest_max_model_len(backends: Iterable[object], model: str) -> int | None:
    """The largest max_model_len for `model` that a backend serving it has told (None if none)."""
    best = None
    for b in backends:
        models = getattr(b, "models", None)
        if models and model not in models:
            continue
        mml, _ = backend_limits(b, model)
        if mml is not None and (best is None or mml > best):
            best = mml
    return best


def implied_max_tokens(
    chat: bool,
    prompt_tokens: int,
    max_model_len: int | None,
    chat_default: int = CHAT_DEFAULT_MAX_TOKENS,
) -> int:
    """The max_tokens vLLM applies to a request that omits it: the context window left after
    the prompt (chat), or 16 capped by that window (completions). `max_model_len` is the largest
    a backend has told (None: unknown, then chat declares `chat_default`). At least 1, so a
    prompt that already fills the window is refused by `context_refusal`, as vLLM refuses it."""
    window = None if max_model_len is None else max_model_len - prompt_tokens
    if chat:
        n = chat_default if window is None else window
    else:
        n = (
            COMPLETIONS_DEFAULT_MAX_TOKENS
            if window is None
            else min(COMPLETIONS_DEFAULT_MAX_TOKENS, window)
        )
    return max(1, n)


def context_refusal(
    backends: Iterable[object], model: str, prompt_tokens: int, max_tokens: int
) -> str | None:
    """Why no backend serving `model` could ever hold this request (None if one might)."""
    need = prompt_tokens + max_tokens
    best_mml = best_kv = 0
    seen = False
    for b in backends:
        models = getattr(b, "models", None)
        if models and model not in models:
            continue
        seen = True
        mml, kv = backend_limits(b, model)
        if mml is None or kv is None:
            return None  # it has not told us both sizes: let it decide
        if need <= mml and prompt_tokens < kv:
            return None
        best_mml, best_kv = max(best_mml, mml), max(best_kv, kv)
    if not seen:
        return None
    return (
        f"This request needs {need} tokens ({prompt_tokens} in the prompt, {max_tokens} "
        f"max_tokens), but no backend can hold it: the largest maximum context length is "
        f"{best_mml} tokens and the largest KV cache holds {best_kv} tokens."
    )
