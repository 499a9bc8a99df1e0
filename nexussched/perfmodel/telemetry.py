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
    cached_tokens: int = 0  # prompt tokens of requests admitted this step served by prefix cache
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
        # positional, in field order: a router reads thousands of these a second
        get = d.get
        pc = get("prefill_chunks", ())
        # (tuple(pc) for an empty one: () for [], a TypeError for null, as the loop would give)
        chunks = tuple([(int(c), int(x)) for c, x in pc]) if pc else tuple(pc)
        return cls(
            float(d["duration"]),
            chunks,
            int(get("num_decodes", 0)),
            int(get("decode_ctx_sum", 0)),
            int(get("kv_blocks_used", 0)),
            int(get("num_waiting", 0)),
            int(get("cached_tokens", 0)),
            float(get("t", 0.0)),
            int(get("step", 0)),
            str(get("engine", "")),
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

    def write_jsonl(self, path: str | Path, run: str | None = None, append: bool = False) -> None:
        """One JSON object per record; `run` tags each with the run it came from (several runs
        may share one file, told apart by `read_jsonl(..., run=TAG)`)."""
        with open(path, "a" if append else "w") as f:
            for r in self.records:
                d = r.to_dict()
                if run is not None:
                    d["run"] = run
                f.write(json.dumps(d, separators=(",", ":")) + "\n")


def read_jsonl(
    path: str | Path, engine: str | None = None, run: str | None = None
) -> Iterator[StepRecord]:
    """Read step records (of one engine and/or one run tag when given); a bad line raises
    ValueError naming the file and line."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
                rec = StepRecord.from_dict(d)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"bad telemetry file {path}, line {lineno}: {e}") from None
            if (engine is None or rec.engine == engine) and (run is None or d.get("run") == run):
                yield rec


def telemetry_index(path: str | Path) -> tuple[dict[str, int], dict[str, int]]:
    """(records per run tag, records per engine) of a telemetry file; untagged records count
    under the run tag ''."""
    runs: dict[str, int] = {}
    engines: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue  # read_jsonl reports bad lines with their number
            if not isinstance(d, dict):
                continue
            r, e = str(d.get("run", "")), str(d.get("engine", ""))
            runs[r] = runs.get(r, 0) + 1
            engines[e] = engines.get(e, 0) + 1
    return runs, engines
