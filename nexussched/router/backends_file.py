"""Changing a backends file from the admin API, for a router with several worker processes: the
file is where they all meet. A change is made under an exclusive lock (fcntl.flock on FILE.lock,
so two workers' changes never interleave) and written atomically (a temporary file renamed over
it, so a watcher never reads half a file). Every worker's watcher then applies it.

The file is rewritten from its entries (YAML, or JSON for a .json file): comments and layout are
not kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from .config import BackendSpec, load_backends_file


def spec_entry(s: BackendSpec) -> dict:
    """A backend as a file entry (only the fields it has)."""
    e: dict = {"url": s.url, "name": s.name}
    if s.api_key:
        e["api_key"] = s.api_key
    if s.models:
        e["models"] = list(s.models)
    return e


def _write(path: Path, specs: list[BackendSpec]) -> None:
    entries = {"backends": [spec_entry(s) for s in specs]}
    if path.suffix.lower() == ".json":
        text = json.dumps(entries, indent=2) + "\n"
    else:
        text = yaml.safe_dump(entries, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)  # keep who may read it (api keys)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def edit_backends_file(
    path: str | Path, change: Callable[[list[BackendSpec]], list[BackendSpec]]
) -> list[BackendSpec]:
    """Apply `change` to the file's backends under the lock and write the result (blocking: run
    it on a thread). `change` may raise (ValueError, LookupError...) to leave the file as it is.
    Returns what was written."""
    p = Path(path)
    lock = p.with_name(p.name + ".lock")
    with open(lock, "a") as lf:
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        try:
            specs = load_backends_file(p, allow_empty=True)
            new = change(list(specs))
            _write(p, new)
            return new
        finally:
            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)
