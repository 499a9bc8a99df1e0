"""Synthetic multi-turn sessions: chats and agent loops whose turns extend earlier context.

Each session starts from one of a few shared system prompts (popularity Zipf-like, so some are
shared by many sessions). A chat session then alternates user messages and model replies; an
agent session appends a task, then per step the model's action (its output) and a tool result.
Every turn's prompt is the whole context so far (system prompt, earlier turns and earlier
replies, then the new message), so a prefix cache that kept the previous turn serves most of it.

Content is tracked as segments (a system prompt, one message, one reply) with unique ids, and a
request's `prefix_hashes` name its tokens (prompt, then its reply) in `BLOCK`-token blocks,
chained, so equal hashes mean equal prefixes, as in Mooncake's `hash_ids`.

Sessions start as a Poisson process, from `warmup` seconds before the trace's start (the trace
keeps turns from 0 on: a steady mix, not a ramp from no sessions); a turn arrives a think time
after the previous turn's expected reply (`reply_pace` s per output token). Spec: `synthetic:sessions[,key=value...]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from .types import Trace, TraceRequest

BLOCK = 64  # tokens per content hash (the engine maps them onto its own blocks)


@dataclass(frozen=True)
class SessionMix:
    """The session workload's knobs (each is a spec key)."""

    n: int = 2000  # requests
    rate: float = 10.0  # mean requests per second
    seed: int = 0
    systems: int = 8  # distinct shared system prompts
    system_tokens: float = 1500.0  # mean system prompt length
    agent: float = 0.3  # share of sessions that are agent loops
    chat_turns: float = 5.0  # mean turns of a chat session (geometric, at least 1)
    agent_turns: float = 10.0  # mean steps of an agent session
    user_tokens: float = 200.0  # mean chat user message
    reply_tokens: float = 250.0  # mean chat reply
    tool_tokens: float = 600.0  # mean tool result appended per agent step
    action_tokens: float = 120.0  # mean agent action (its output)
    think: float = 15.0  # mean s between a chat reply and the next user message
    tool_time: float = 1.0  # mean s a tool call takes
    reply_pace: float = 0.03  # s per output token assumed for a reply's duration
    max_context: int = 32768  # a session ends before its context would pass this
    # s of sessions already under way when the trace starts: sessions start from -warmup and
    # only turns from 0 on are kept, so the window sees the steady mix of early and late turns
    # (from a cold start, load and context lengths would grow through the whole window)
    warmup: float = 300.0

    def __post_init__(self) -> None:
        if self.n <= 0 or self.systems <= 0 or self.max_context <= 0:
            raise ValueError("sessions: n, systems and max_context must be positive")
        if not 0.0 <= self.agent <= 1.0:
            raise ValueError(f"sessions: agent must be in [0, 1], got {self.agent!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("seed", "agent", "warmup") and not (math.isfinite(v) and v > 0):
                raise ValueError(f"sessions: {f.name} must be a positive number, got {v!r}")
        if self.seed < 0:
            raise ValueError("sessions: seed must be >= 0")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError(f"sessions: warmup must be >= 0 seconds, got {self.warmup!r}")


class _Context:
    """A session's tokens as chained hashes of full BLOCK-token blocks."""

    __slots__ = ("tokens", "hashes", "_h", "_pending", "_fill")

    def __init__(self) -> None:
        self.tokens = 0
        self.hashes: list[int] = []
        self._h = 0x51F15E
        self._pending: list[tuple[int, int, int]] = []
        self._fill = 0

    def add(self, seg: int, length: int) -> None:
        start = 0
        while start < length:
            take = min(BLOCK - self._fill, length - start)
            self._pending.append((seg, start, start + take))
            self._fill += take
            start += take
            if self._fill == BLOCK:
                self._h = hash((self._h, tuple(self._pending)))
                self.hashes.append(self._h)
                self._pending = []
                self._fill = 0
        self.tokens += length


def _length(rng: np.random.Generator, mean: float, cv: float = 0.6, lo: int = 8) -> int:
    s = math.sqrt(math.log1p(cv * cv))
    return max(lo, int(round(rng.lognormal(math.log(mean) - s * s / 2.0, s))))


def sessions_trace(mix: SessionMix, name: str = "synthetic:sessions") -> Trace:
    rng = np.random.default_rng(mix.seed)
    # system prompts: lengths, and Zipf-like popularity (weight 1/rank)
    sys_len = [_length(rng, mix.system_tokens, 0.5, 64) for _ in range(mix.systems)]
    pop = np.array([1.0 / (k + 1) for k in range(mix.systems)])
    pop /= pop.sum()
    mean_turns = (1 - mix.agent) * mix.chat_turns + mix.agent * mix.agent_turns
    session_rate = mix.rate / mean_turns
    seg = mix.systems  # segment ids below this are the shared system prompts
    out: list[tuple[float, int, int, tuple[int, ...]]] = []
    t = -mix.warmup
    # sessions start in time order: once n requests arrived before the next session's start,
    # later sessions cannot be among the first n
    while len(out) < mix.n or t < float(np.partition([o[0] for o in out], mix.n - 1)[mix.n - 1]):
        agent = rng.random() < mix.agent
        s = int(rng.choice(mix.systems, p=pop))
        ctx = _Context()
        ctx.add(s, sys_len[s])
        turns = int(rng.geometric(1.0 / (mix.agent_turns if agent else mix.chat_turns)))
        at = t
        for j in range(turns):
            if agent:
                msg = (
                    _length(rng, mix.user_tokens, 0.6) if j == 0 else _length(rng, mix.tool_tokens)
                )
                reply = _length(rng, mix.action_tokens, 0.6, 4)
            else:
                msg = _length(rng, mix.user_tokens)
                reply = _length(rng, mix.reply_tokens, 0.8, 4)
            if ctx.tokens + msg + reply > mix.max_context:
                break
            seg += 1
            ctx.add(seg, msg)
            prompt = ctx.tokens
            seg += 1
            ctx.add(seg, reply)
            if at >= 0.0:
                out.append((at, prompt, reply, tuple(ctx.hashes)))
            pause = mix.tool_time if agent else mix.think
            at += reply * mix.reply_pace + float(rng.exponential(pause))
        t += float(rng.exponential(1.0 / session_rate))
    out.sort(key=lambda o: o[0])
    out = out[: mix.n]
    requests = [
        TraceRequest(
            id=i,
            arrival=a,
            prompt_tokens=p,
            output_tokens=o,
            prefix_hashes=h,
            prefix_block=BLOCK,
        )
        for i, (a, p, o, h) in enumerate(out)
    ]
    return Trace(name=name, requests=requests, meta={"seed": mix.seed, "prefix_block": BLOCK})


def _parser(f_type: str) -> Callable[[str], object]:
    return int if f_type == "int" else float


def sessions_from_spec(spec: str, body_parts: list[str]) -> Trace:
    """`synthetic:sessions,key=value,...` with SessionMix's fields as keys."""
    kinds = {f.name: _parser(str(f.type)) for f in fields(SessionMix)}
    kwargs: dict[str, object] = {}
    for part in body_parts:
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(f"synthetic spec {spec!r}: expected key=value, got {part!r}")
        if key not in kinds:
            raise ValueError(
                f"synthetic spec {spec!r}: unknown key {key!r}; keys: {', '.join(kinds)}"
            )
        if key in kwargs:
            raise ValueError(f"synthetic spec {spec!r}: key {key!r} given twice")
        try:
            kwargs[key] = kinds[key](value)
        except ValueError:
            raise ValueError(
                f"synthetic spec {spec!r}: key {key!r} expects a number, got {value!r}"
            ) from None
    try:
        mix = SessionMix(**kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"synthetic spec {spec!r}: {e}") from None
    return sessions_trace(mix, name=spec.strip())
