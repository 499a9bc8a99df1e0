"""The telemetry plane's wire format: step records and load snapshots in a Redis Stream per engine,
and an engine's fitted model as a model card.

One stream per engine (``KeySpace.steps(engine)``); an entry has two fields: ``k`` (``s`` for a
StepRecord, ``l`` for a load snapshot) and ``d`` (its JSON). Writers cap the stream with
``XADD ... MAXLEN ~ N`` so it never grows without bound; each reader keeps its own cursor (the last
entry id it read), so any number of router replicas read every record and learn from the same data.

A model card (``KeySpace.model(engine)``) is JSON ``{"steps": N, "by": WHO, "t": unix_s, "model":
PerfModel.to_dict()}``: N is how many step records the model was learned from, so a reader can
prefer the better-informed model (an engine's own, or a replica's that saw more of it).

Pure encoding plus a few synchronous/asynchronous helpers that take any redis-py client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..perfmodel.model import PerfModel
from ..perfmodel.telemetry import StepRecord

STEP = "s"
LOAD = "l"
DEFAULT_MAXLEN = 20_000  # entries kept per engine stream (~ a few minutes of a busy engine)


def encode_step(rec: StepRecord) -> dict[str, str]:
    return {"k": STEP, "d": json.dumps(rec.to_dict(), separators=(",", ":"))}


def encode_load(load: dict) -> dict[str, str]:
    return {"k": LOAD, "d": json.dumps(load, separators=(",", ":"))}


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_entry(fields: dict) -> tuple[str, StepRecord | dict] | None:
    """(STEP, StepRecord) or (LOAD, dict) from a stream entry's fields; None for a bad entry (one
    bad record must not stop a reader)."""
    kind = fields.get("k", fields.get(b"k"))
    data = fields.get("d", fields.get(b"d"))
    if kind is None or data is None:
        return None
    kind = _text(kind)
    try:
        d = json.loads(_text(data))
        if kind == STEP:
            return STEP, StepRecord.from_dict(d)
        if kind == LOAD and isinstance(d, dict):
            return LOAD, d
    except (ValueError, KeyError, TypeError):
        return None
    return None


@dataclass(frozen=True, slots=True)
class ModelCard:
    model: PerfModel
    steps: int
    by: str
    t: float


def model_card(model: PerfModel, steps: int, by: str, now: float | None = None) -> str:
    return json.dumps(
        {
            "steps": int(steps),
            "by": by,
            "t": time.time() if now is None else now,
            "model": model.to_dict(),
        }
    )


def parse_model_card(raw: object) -> ModelCard | None:
    """A model card from its JSON; None if absent or malformed."""
    if not raw:
        return None
    try:
        d = json.loads(_text(raw))
        return ModelCard(
            PerfModel.from_dict(d["model"]),
            int(d.get("steps", 0)),
            str(d.get("by", "")),
            float(d.get("t", 0.0)),
        )
    except (ValueError, KeyError, TypeError):
        return None
