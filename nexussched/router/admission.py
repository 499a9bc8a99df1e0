"""Admission by size: refuse what no backend could ever hold, as vLLM would, but before routing.

A request whose prompt + max_tokens exceeds every backend's max_model_len (from its /v1/models
card), or whose prompt exceeds every backend's KV cache (vllm:cache_config_info: num_gpu_blocks x
block_size), can never be served. Sent anyway, it would fail at its backend or, behind a holding
policy, wait for good. The router answers 400 `context_length_exceeded`, naming both sizes, as the
simulator refuses it at admission. Backends that have not told their sizes yet are assumed to fit.
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
