"""Rough token counts of OpenAI request bodies, shared by the router and the mock engine.

Routing and the mock engine need a size, not an exact count: text is ~4 characters per token.
"""

from __future__ import annotations


def text_tokens(s: str) -> int:
    return (len(s) + 3) // 4


def message_tokens(m: dict) -> int:
    """One chat message: its text content (plain or multi-part) plus ~4 for role and separators."""
    n = 4
    c = m.get("content")
    if isinstance(c, str):
        n += text_tokens(c)
    elif isinstance(c, list):
        for part in c:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                n += text_tokens(part["text"])
    return n
