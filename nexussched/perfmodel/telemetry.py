"""Step telemetry: the record one engine iteration emits, real or simulated.

The same shape comes from the simulator, the vLLM scheduler plug-in and the mock engine server, so
the perf model never knows which world it learns from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(slots=True)
class StepRecord:
    """One engine step: what ran (batch composition) and how long it took (wall seconds)."""

    duration: float
    prefill_chunks: tuple[tuple[int, int], ...] = ()  # (tokens this step, context before the chunk)
    num_decodes: int = 0
    decode_ctx_sum: int = 0
    kv_blocks_used: int = 0
    num_waiting: int = 0
    t: float = 0.0  # step start, engine clock (s)
    step: int = 0
    engine: str = ""

    @property
    def prefill_tokens(self) -> int:
        return sum(c for c, _ in self.prefill_chunks)

    @property
    def prefill_attn(self) -> float:
        return prefill_attn_work(self.prefill_chunks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_chunks"] = [list(c) for c in self.prefill_chunks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        chunks = tuple((int(c), int(x)) for c, x in d.get("prefill_chunks", ()))
        return cls(
            duration=float(d["duration"]),
            prefill_chunks=chunks,
            num_decodes=int(d.get("num_decodes", 0)),
            decode_ctx_sum=int(d.get("decode_ctx_sum", 0)),
            kv_blocks_used=int(d.get("kv_blocks_used", 0)),
            num_waiting=int(d.get("num_waiting", 0)),
            t=float(d.get("t", 0.0)),
            step=int(d.get("step", 0)),
            engine=str(d.get("engine", "")),
        )


def prefill_attn_work(chunks: Iterable[tuple[int, int]]) -> float:
    """Attention work of prefill chunks: each new token attends to its context and half the chunk."""
    return float(sum(c * (ctx + c / 2.0) for c, ctx in chunks))


@dataclass(slots=True)
class TelemetryLog:
    """An in-memory list of step records with JSONL persistence."""

    records: list[StepRecord] = field(default_factory=list)

    def append(self, rec: StepRecord) -> None:
        self.records.append(rec)

    def write_jsonl(self, path: str | Path) -> None:
        with open(path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r.to_dict(), separators=(",", ":")) + "\n")


def read_jsonl(path: str | Path, engine: str | None = None) -> Iterator[StepRecord]:
    """Read step records; a bad line raises ValueError naming the file and line."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = StepRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"bad telemetry file {path}, line {lineno}: {e}") from None
            if engine is None or rec.engine == engine:
                yield rec
