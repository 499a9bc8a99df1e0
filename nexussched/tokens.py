"""Rough token counts of OpenAI request bodies, shared by the router and the mock engine.

Routing and the mock engine need a size, not an exact count: text is ~4 characters per token.
"""

from __future__ import annotations

import hashlib
import re
import struct
from functools import lru_cache


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


# ---- content of a prompt, for prefix caching and prefix-aware routing --------------------------
# Both the mock engine (its prefix cache) and the router (its prefix index) name a prompt's full
# KV blocks by chained hashes of the same rough tokens, so equal prompt prefixes give equal block
# hashes on both sides (and in published KV events). The hash is blake2b, stable
# across processes (Python's str hash is salted per process).

DEFAULT_BLOCK_SIZE = 16  # vLLM's default KV block size (tokens)


_PIECES = re.compile(".{1,4}", re.DOTALL)


def text_pieces(s: str) -> list[str]:
    """The rough tokens of a text: 4-character pieces (as many as text_tokens counts)."""
    return _PIECES.findall(s)  # the same as [s[i : i + 4] for i in range(0, len(s), 4)], in C


def message_pieces(m: dict) -> list[str]:
    """One chat message's rough tokens: 4 for its role and separators, then its text."""
    role = str(m.get("role", ""))
    out = [f"<|{role}|>", "", "", "\n"]
    c = m.get("content")
    if isinstance(c, str):
        out += text_pieces(c)
    elif isinstance(c, list):
        for part in c:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out += text_pieces(part["text"])
    return out


def prompt_pieces(body: dict, chat: bool) -> list[str | int]:
    """A request body's prompt as rough tokens (token ids stay ids); [] if it has no prompt."""
    if chat:
        msgs = body.get("messages")
        out: list[str | int] = []
        if isinstance(msgs, list):
            for m in msgs:
                if isinstance(m, dict):
                    out += message_pieces(m)
        return out
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]
    if isinstance(p, str):
        return text_pieces(p)  # a new list already
    if isinstance(p, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return list(p)
    return []


def sequence_pieces(body: dict, chat: bool, answer: str) -> list[str | int]:
    """A request's prompt followed by its answer, as rough tokens laid out as the next request of
    the conversation will carry them: for chat, the answer as the assistant message a client
    appends; for a text completion, the prompt's text continued by the answer's. (vLLM caches
    full blocks of generated tokens too, so that next request hits on the answer.)"""
    if chat:
        return prompt_pieces(body, True) + message_pieces({"role": "assistant", "content": answer})
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]
    if isinstance(p, str):
        return text_pieces(p + answer)
    return prompt_pieces(body, False) + text_pieces(answer)


def block_hashes(pieces: list[str | int], block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[int, ...]:
    """Chained 63-bit hashes of the full `block_size`-token blocks of `pieces`."""
    out: list[int] = []
    prev = b"nexussched"
    blake = hashlib.blake2b
    for i in range(0, len(pieces) - block_size + 1, block_size):
        chunk = pieces[i : i + block_size]
        blk = None
        if type(chunk[0]) is str:
            # A text prompt's block, every piece a str: one join in C (the router hashes every
            # request's prompt, PRISM's prefix index reads them), the same string as below.
            try:
                blk = "s" + "\x1fs".join(chunk)  # type: ignore[arg-type]
            except TypeError:  # a token id among them
                pass
        if blk is None:
            blk = "\x1f".join((f"i{x}" if isinstance(x, int) else "s" + x) for x in chunk)
        prev = blake(prev + blk.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out.append(int.from_bytes(prev, "big") >> 1)
    return tuple(out)


def prompt_block_hashes(
    body: dict, chat: bool, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[int, ...]:
    """block_hashes(prompt_pieces(body, chat), block_size), the router's per-request hashing: a
    plain ASCII text prompt (a completion's usual prompt) is hashed without a str object per
    piece (each cost about as much as the rest of the hash), the others as block_hashes does."""
    if not chat:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
            p = p[0]
        if isinstance(p, str) and p.isascii():
            return _ascii_block_hashes(p, block_size)
    return block_hashes(prompt_pieces(body, chat), block_size)


@lru_cache(maxsize=8)
def _block_struct(block_size: int) -> struct.Struct:
    return struct.Struct("4s" * block_size)


# Hashes of ASCII blocks seen before, per block size, by what they hash: the previous block's
# digest and the block's text (a first block's key is its text alone: shorter, so no key is
# both). Prompts share prefixes (a system prompt, a conversation's earlier turns), and a repeated
# block then costs a dict lookup instead of a blake2b. Bounded: a full memo is cleared.
_SEEN: dict[int, dict[bytes, tuple[bytes, int]]] = {}
SEEN_MAX = 1 << 14


def _ascii_block_hashes(s: str, block_size: int) -> tuple[int, ...]:
    """block_hashes(text_pieces(s), block_size) for ASCII s: a full block is block_size pieces
    of 4 bytes each, which one struct unpack splits in C (the same pieces, the same strings)."""
    b = s.encode("ascii")
    per = 4 * block_size
    full = len(b) // per
    if (len(b) + 3) // 4 // block_size != full:
        # the text's short last piece completes a block: that block is not 4-byte pieces
        return block_hashes(text_pieces(s), block_size)
    out: list[int] = []
    prev = b"nexussched"
    seen = _SEEN.get(block_size)
    if seen is None:
        seen = _SEEN[block_size] = {}
    blake = hashlib.blake2b
    unpack = None  # looked up at the first block the memo misses (none, for a repeated prompt)
    for off in range(0, full * per, per):
        key = b[off : off + per] if off == 0 else prev + b[off : off + per]
        got = seen.get(key)
        if got is None:
            if unpack is None:
                unpack = _block_struct(block_size).unpack_from
            pieces = unpack(b, off)
            d = blake(prev + b"s" + b"\x1fs".join(pieces), digest_size=8).digest()
            got = (d, int.from_bytes(d, "big") >> 1)
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen[key] = got
        prev = got[0]
        out.append(got[1])
    return tuple(out)
