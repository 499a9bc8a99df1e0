"""Loaders for public LLM request traces: Azure 2023/2024 CSV, BurstGPT CSV, Mooncake JSONL.

Every loader returns a `Trace` whose arrivals are seconds from the earliest request
(so the first arrival is 0), sorted stably by arrival, with ids 0..n-1 in that order.
Malformed content raises `TraceError` naming the file, 1-based line and field.

Token counts are clamped to >= 1: an empty prompt still costs one prefill token
(the BOS / template token), and an engine always emits at least one token before it
can stop, so a recorded 0 would make TTFT/TPOT undefined downstream.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
import math
import os
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from .errors import TraceError
from .synthetic import SCENARIOS, SYNTHETIC_PREFIX, synthetic_from_spec
from .transform import head
from .types import Trace, TraceRequest

TRACES_DIR_ENV = "NEXUSSCHED_TRACES_DIR"

#: Short names for the public traces: the file in a traces directory (plain, .xz or .gz), also
#: shipped xz-compressed in the package (nexussched/data/traces, with their licences).
KNOWN_TRACES: dict[str, str] = {
    "azure-code": "azure2023_code.csv",
    "azure-conv": "azure2023_conv.csv",
    "mooncake-conv": "mooncake_conversation.jsonl",
}

#: `bundled`: the first BUNDLED_REQUESTS requests of the packaged azure-conv (the demo's default).
BUNDLED = "bundled"
BUNDLED_REQUESTS = 3000

#: Where the packaged copies live (a data folder, not a module: this imports nothing of ours).
PACKAGED_TRACES_DIR = Path(__file__).resolve().parents[1] / "data" / "traces"

_COMPRESSED = (".xz", ".gz")

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")

# Azure writes 7 fractional digits ("18:17:03.9799600"); the 2024 release may add "+00:00"
# or drop digits. A regex is faster than strptime and keeps every fractional digit.
_TS_RE = re.compile(
    r"\s*(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(?:Z|UTC|([+-])(\d{2}):?(\d{2}))?\s*$"
)


# ---------------------------------------------------------------------------- parsing helpers


def _parse_timestamp(text: str) -> tuple[datetime, float] | None:
    """(whole seconds as naive UTC datetime, fractional second) or None if unparseable."""
    m = _TS_RE.match(text)
    if m is None:
        return None
    y, mo, d, hh, mm, ss, frac, sign, oh, om = m.groups()
    try:
        base = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss))
    except ValueError:
        return None
    if sign is not None:
        offset = timedelta(hours=int(oh), minutes=int(om))
        base = base - offset if sign == "+" else base + offset
    return base, float("0." + frac) if frac else 0.0


def _count(text: str, path: Path, line: int, field: str) -> int:
    """A non-negative integer token count; integral floats ("12.0") are accepted."""
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f.is_integer()):
            raise TraceError(
                path, line, field, f"expected a non-negative integer, got {TraceError.got(text)}"
            ) from None
        value = int(f)
    if value < 0:
        raise TraceError(
            path, line, field, f"expected a non-negative integer, got {TraceError.got(text)}"
        )
    return value


def _seconds(text: str, path: Path, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise TraceError(
            path, line, field, f"expected a non-negative number, got {TraceError.got(text)}"
        )
    return value


def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig drops the BOM spreadsheet exports put before the header.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


def _csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, values of `columns`) per data row; header names match loosely."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(
                    path, 1, "header", f"file is empty; expected columns {','.join(columns)}"
                )
            # Header names may carry spaces (BurstGPT) or differ in case across releases.
            index = {name.strip().lower(): i for i, name in enumerate(header)}
            picks: list[int] = []
            for col in columns:
                if col.lower() not in index:
                    have = ",".join(h.strip() for h in header)
                    raise TraceError(path, 1, col, f"missing column; header is {have!r}")
                picks.append(index[col.lower()])
            rows = 0
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                line = reader.line_num
                if len(row) <= max(picks):
                    missing = next(c for c, i in zip(columns, picks, strict=True) if i >= len(row))
                    raise TraceError(
                        path, line, missing, f"missing value (row has {len(row)} fields)"
                    )
                rows += 1
                yield line, [row[i].strip() for i in picks]
        except csv.Error as e:
            raise TraceError(path, reader.line_num + 1, None, f"bad CSV: {e}") from None
        except UnicodeDecodeError as e:
            raise TraceError(
                path, reader.line_num + 1, None, f"not UTF-8 text: {e.reason}"
            ) from None
    if rows == 0:
        raise TraceError(path, 2, None, "no requests after the header")


def _build(
    name: str,
    arrivals: Sequence[float],
    prompts: Sequence[int],
    outputs: Sequence[int],
    hashes: Sequence[tuple[int, ...]] | None = None,
    meta: dict[str, object] | None = None,
) -> Trace:
    """Rebase arrivals to the earliest, stable-sort by arrival, clamp counts, number ids."""
    t0 = min(arrivals) if arrivals else 0.0
    order = sorted(range(len(arrivals)), key=arrivals.__getitem__)  # sorted() is stable
    requests = [
        TraceRequest(
            id=new_id,
            arrival=arrivals[i] - t0,
            prompt_tokens=max(1, prompts[i]),
            output_tokens=max(1, outputs[i]),
            prefix_hashes=hashes[i] if hashes is not None else (),
        )
        for new_id, i in enumerate(order)
    ]
    return Trace(name=name, requests=requests, meta=dict(meta or {}))


def _trace_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------------------- the loaders


def load_azure2023(path: str | os.PathLike[str]) -> Trace:
    """Azure LLM inference trace CSV (2023 and 2024): TIMESTAMP, ContextTokens, GeneratedTokens."""
    path = Path(path)
    stamps: list[tuple[datetime, float]] = []
    prompts: list[int] = []
    outputs: list[int] = []
    for line, (ts, ctx, gen) in _csv_rows(path, AZURE_COLUMNS):
        parsed = _parse_timestamp(ts)
        if parsed is None:
            raise TraceError(
                path,
                line,
                "TIMESTAMP",
                f"expected a time like '2023-11-16 18:17:03.9799600', got {TraceError.got(ts)}",
            )
        stamps.append(parsed)
        prompts.append(_count(ctx, path, line, "ContextTokens"))
        outputs.append(_count(gen, path, line, "GeneratedTokens"))
    # Subtract whole-second datetimes exactly, then add fractions, so no precision is lost.
    base, frac0 = min(stamps)
    arrivals = [(b - base).total_seconds() + (f - frac0) for b, f in stamps]
    return _build(_trace_name(path), arrivals, prompts, outputs)


#: The 2024 Azure release uses the same columns; its timestamp variants are accepted.
load_azure2024 = load_azure2023


def load_burstgpt(path: str | os.PathLike[str]) -> Trace:
    """BurstGPT CSV: Timestamp (s), ..., Request tokens, Response tokens, ...

    Rows with 0 response tokens are failed requests: they are skipped, and their
    count is kept in `trace.meta["skipped_failed"]`.
    """
    path = Path(path)
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    skipped = 0
    for line, (ts, req, resp) in _csv_rows(path, BURSTGPT_COLUMNS):
        t = _seconds(ts, path, line, "Timestamp")
        p = _count(req, path, line, "Request tokens")
        o = _count(resp, path, line, "Response tokens")
        if o == 0:
            skipped += 1
            continue
        arrivals.append(t)
        prompts.append(p)
        outputs.append(o)
    if not arrivals:
        raise TraceError(path, 2, "Response tokens", f"all {skipped} requests failed (0 tokens)")
    return _build(_trace_name(path), arrivals, prompts, outputs, meta={"skipped_failed": skipped})


def _json_count(obj: dict, key: str, path: Path, line: int) -> int:
    if key not in obj:
        raise TraceError(path, line, key, "missing field")
    v = obj[key]
    # bool is an int subclass in Python; a JSON true is not a token count.
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TraceError(path, line, key, f"expected a non-negative integer, got {v!r}")
    return v


def load_mooncake(path: str | os.PathLike[str]) -> Trace:
    """Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids (prefix blocks)."""
    path = Path(path)
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise TraceError(
                        path, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})"
                    ) from None
                if not isinstance(obj, dict):
                    raise TraceError(path, lineno, None, "expected a JSON object")
                if "timestamp" not in obj:
                    raise TraceError(path, lineno, "timestamp", "missing field")
                ts = obj["timestamp"]
                if (
                    isinstance(ts, bool)
                    or not isinstance(ts, int | float)
                    or not math.isfinite(ts)
                    or ts < 0
                ):
                    raise TraceError(
                        path, lineno, "timestamp", f"expected non-negative milliseconds, got {ts!r}"
                    )
                prompt = _json_count(obj, "input_length", path, lineno)
                output = _json_count(obj, "output_length", path, lineno)
                ids = obj.get("hash_ids", [])
                if not isinstance(ids, list) or not all(
                    isinstance(h, int) and not isinstance(h, bool) for h in ids
                ):
                    raise TraceError(
                        path, lineno, "hash_ids", f"expected a list of integers, got {ids!r}"
                    )
                arrivals.append(ts / 1000.0)
                prompts.append(prompt)
                outputs.append(output)
                hashes.append(tuple(ids))
        except UnicodeDecodeError as e:
            raise TraceError(path, lineno + 1, None, f"not UTF-8 text: {e.reason}") from None
    if not arrivals:
        raise TraceError(path, 1, None, "file is empty (no JSON lines)")
    return _build(_trace_name(path), arrivals, prompts, outputs, hashes)


# ---------------------------------------------------------------------------- dispatch


def detect_format(path: str | os.PathLike[str]) -> str:
    """'mooncake', 'azure' or 'burstgpt', from the extension and the header line."""
    path = Path(path)
    suffixes = [s for s in path.suffixes if s not in _COMPRESSED]
    if suffixes and suffixes[-1] in (".jsonl", ".json"):
        return "mooncake"
    with _open_text(path) as f:
        first = f.readline()
    if first.lstrip().startswith("{"):
        return "mooncake"
    names = {n.strip().lower() for n in first.split(",")}
    if "request tokens" in names:
        return "burstgpt"
    if "contexttokens" in names or "timestamp" in names:
        return "azure"
    raise TraceError(
        path,
        1,
        "header",
        f"unrecognised trace format (header {first.strip()!r}); expected Azure "
        f"({','.join(AZURE_COLUMNS)}), BurstGPT ({', '.join(BURSTGPT_COLUMNS)}) or Mooncake JSONL",
    )


_LOADERS = {"mooncake": load_mooncake, "azure": load_azure2023, "burstgpt": load_burstgpt}


def load_path(path: str | os.PathLike[str]) -> Trace:
    """Load a trace file of any supported format."""
    return _LOADERS[detect_format(path)](path)


def default_traces_dir() -> Path | None:
    """$NEXUSSCHED_TRACES_DIR, else the first `shared/traces` above the cwd or this package."""
    env = os.environ.get(TRACES_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd()
    here = Path(__file__).resolve()
    for base in (cwd, *cwd.parents, *here.parents):
        candidate = base / "shared" / "traces"
        if candidate.is_dir():
            return candidate
    return None


def _in_dir(directory: Path, filename: str) -> Path | None:
    for name in (filename, *(filename + z for z in _COMPRESSED)):
        if (directory / name).is_file():
            return directory / name
    return None


def known_trace_file(name: str, traces_dir: str | os.PathLike[str] | None = None) -> Path:
    """The file behind a short trace name. Order: `traces_dir` (a directory the user named: the
    file must be there), $NEXUSSCHED_TRACES_DIR (likewise), a `shared/traces` found above the cwd
    or the package, then the copy shipped in the package."""
    filename = KNOWN_TRACES[name]
    explicit = traces_dir if traces_dir is not None else os.environ.get(TRACES_DIR_ENV) or None
    if explicit is not None:
        directory = Path(explicit).expanduser()
        found = _in_dir(directory, filename)
        if found is None:
            via = "--traces-dir" if traces_dir is not None else TRACES_DIR_ENV
            raise FileNotFoundError(
                f"trace {name!r}: no {filename}[.xz|.gz] in {directory} (from {via}); "
                f"without it the copy shipped in the package is used"
            )
        return found
    shared = default_traces_dir()
    found = _in_dir(shared, filename) if shared is not None else None
    if found is None:
        found = _in_dir(PACKAGED_TRACES_DIR, filename)
    if found is None:  # a broken install: the package data was left out
        raise FileNotFoundError(
            f"trace {name!r}: not in the package ({PACKAGED_TRACES_DIR}) and no shared/traces "
            f"found; set {TRACES_DIR_ENV} to a directory holding {filename}"
        )
    return found


def _known_names() -> str:
    return (
        f"known traces: {', '.join(KNOWN_TRACES)}, {BUNDLED}; or a .csv/.jsonl path; "
        f"or {SYNTHETIC_PREFIX}NAME[,key=value...] with NAME in {', '.join(SCENARIOS)}"
    )


def load_trace(spec: str, traces_dir: str | os.PathLike[str] | None = None) -> Trace:
    """Load a trace by short name (see KNOWN_TRACES, and `bundled`), file path, or `synthetic:`
    spec. Short names resolve as in `known_trace_file`."""
    spec = spec.strip()
    if spec.startswith(SYNTHETIC_PREFIX):
        return synthetic_from_spec(spec)
    if spec == BUNDLED:
        # Always the packaged copy, so the demo's numbers do not depend on what lies beside it.
        full = load_path(PACKAGED_TRACES_DIR / (KNOWN_TRACES["azure-conv"] + ".xz"))
        trace = head(full, BUNDLED_REQUESTS)
        trace.name = "bundled-azure-conv-3k"
        return trace
    if spec in KNOWN_TRACES:
        trace = load_path(known_trace_file(spec, traces_dir))
        trace.name = spec
        return trace
    path = Path(spec).expanduser()
    if path.exists():
        return load_path(path)
    if "/" in spec or os.sep in spec or path.suffix in (".csv", ".jsonl", ".json", *_COMPRESSED):
        raise FileNotFoundError(f"trace file not found: {spec}")
    raise ValueError(f"unknown trace {spec!r}; {_known_names()}")
