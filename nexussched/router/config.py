"""Router configuration: backend specs (flags or a YAML/JSON file) and validated settings.

A backends file is either a list or a mapping with a `backends` list; each entry is a URL string or
a mapping with `url` and optional `name`, `api_key`, `models`:

    backends:
      - url: http://10.0.0.1:8000
        name: a100-0
      - http://10.0.0.2:8000

Every problem is a ValueError whose one-line message names the file (and the line, for YAML).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .admission import CHAT_DEFAULT_MAX_TOKENS
from .policies.view import SCRAPE_PERIOD

_ENTRY_KEYS = {"url", "name", "api_key", "models"}


@dataclass(frozen=True)
class BackendSpec:
    url: str  # base URL without a trailing slash or /v1, e.g. http://127.0.0.1:8001
    name: str = ""
    api_key: str | None = None  # sent upstream as a Bearer token
    models: tuple[str, ...] = ()  # static model list; empty: ask the backend's /v1/models


def normalize_url(url: str) -> str:
    """Check a backend URL and strip a trailing '/' or '/v1' (OpenAI base_url style)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("backend URL is empty")
    u = url.strip().rstrip("/")
    if u.endswith("/v1"):
        u = u[:-3]
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"backend URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"backend URL {url!r} has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"backend URL {url!r} has a bad port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"backend URL {url!r} must not have a query or fragment")
    return u


def default_name(url: str) -> str:
    p = urlsplit(url)
    return f"{p.hostname}:{p.port}" if p.port else str(p.hostname)


def backend_from_url(url: str) -> BackendSpec:
    u = normalize_url(url)
    return BackendSpec(url=u, name=default_name(u))


def backend_entry(item: object, where: str) -> BackendSpec:
    """One backend from a URL string or a mapping (url, name, api_key, models); ValueError
    naming `where` on a bad entry."""
    if isinstance(item, str):
        try:
            return backend_from_url(item)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if not isinstance(item, dict):
        raise ValueError(
            f"{where}: expected a URL or a mapping with 'url', got {type(item).__name__}"
        )
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(_ENTRY_KEYS))}"
        )
    if "url" not in item:
        raise ValueError(f"{where}: missing 'url'")
    try:
        url = normalize_url(item["url"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    name = item.get("name") or default_name(url)
    models = item.get("models") or ()
    if isinstance(models, str):
        models = (models,)
    if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
        raise ValueError(f"{where}: 'models' must be a list of model names")
    key = item.get("api_key")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"{where}: 'api_key' must be a string")
    return BackendSpec(url=url, name=str(name), api_key=key, models=tuple(models))


def load_backends_file(path: str | Path, allow_empty: bool = False) -> list[BackendSpec]:
    """Read backends from YAML or JSON (by suffix; anything else is tried as YAML, a JSON superset).
    allow_empty: an empty list is valid (a running router's file may lose its last entry)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"backends file {p} not found") from None
    except OSError as e:
        raise ValueError(f"cannot read backends file {p}: {e.strerror}") from None
    lines: list[int | None] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"bad backends file {p}, line {e.lineno}: {e.msg}") from None
    else:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark is not None else ""
            msg = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"bad backends file {p}{line}: {msg}") from None
        # line numbers of the entries, for messages
        seq = node
        if isinstance(node, yaml.MappingNode):
            seq = next((v for k, v in node.value if getattr(k, "value", None) == "backends"), None)
        if isinstance(seq, yaml.SequenceNode):
            lines = [n.start_mark.line + 1 for n in seq.value]
    if isinstance(data, dict):
        unknown = set(data) - {"backends"}
        if unknown:
            raise ValueError(
                f"bad backends file {p}: unknown key(s) {', '.join(sorted(map(str, unknown)))}"
            )
        data = data.get("backends")
    if not isinstance(data, list) or not (data or allow_empty):
        raise ValueError(f"bad backends file {p}: expected a non-empty list of backends")
    out = []
    for i, item in enumerate(data):
        where = f"bad backends file {p}, " + (
            f"line {lines[i]}" if i < len(lines) and lines[i] else f"entry {i + 1}"
        )
        out.append(backend_entry(item, where))
    return out


@dataclass
class RouterSettings:
    """Everything `nexussched router` takes; validate() raises ValueError with a one-line message."""

    backends: list[BackendSpec]
    host: str = "127.0.0.1"
    port: int = 8000
    policy: str = "least_load"
    policy_args: dict = field(default_factory=dict)
    mode: str = "policy"  # how requests are placed: see compose.MODES
    mode_args: dict = field(default_factory=dict)
    api_key: str | None = None  # clients must send `Authorization: Bearer <key>`
    metrics_api_key: str | None = None  # /metrics' own key (default: the API key)
    header_timeout: float = 10.0  # a connection must send a request's headers within this
    body_timeout: float = 30.0  # and its body within this (seconds)
    drain_timeout: float = 30.0  # on SIGTERM: how long requests in flight may still finish
    max_body_bytes: int = 16 * 2**20
    request_timeout: float = 600.0  # whole request, seconds
    idle_timeout: float = 60.0  # a stream with no upstream byte this long has failed
    connect_timeout: float = 5.0
    health_interval: float = 1.0  # probe of an unhealthy backend
    scrape_interval: float = SCRAPE_PERIOD  # /metrics scrape of a healthy backend
    scrape_timeout: float = 2.0
    scrape_failures: int = 3  # consecutive scrape timeouts before a backend is taken out
    retries: int = 1  # extra attempts on another backend before the first response byte
    retry_backoff: float = 0.02  # seconds before the first retry; doubles per retry (jittered)
    retry_backoff_max: float = 1.0  # cap of the backoff
    breaker_failures: int = 5  # consecutive failures that open a backend's breaker (0: off)
    breaker_cooldown: float = 10.0  # seconds open before a half-open trial request
    backends_file: str | None = None  # watched: backends join and leave as it changes
    backends_file_poll: float = 1.0  # seconds between checks of the file
    access_log: bool = True  # one line per request on the `nexussched.access` logger
    workers: int = 1  # processes serving the port (SO_REUSEPORT), each a replica
    max_connections: int = 0  # connection pool size, 0 = unlimited
    default_slo_ttft: float = 2.0  # seconds, when a request states none
    default_slo_tpot: float = 0.1
    # a chat request that omits max_tokens declares max_model_len - prompt (vLLM's default);
    # this many while no backend has told its max_model_len (admission.implied_max_tokens)
    default_max_tokens: int = CHAT_DEFAULT_MAX_TOKENS

    def validate(self) -> RouterSettings:
        if not self.backends:
            raise ValueError("no backends: give --backend URL (repeatable) or --backends-file FILE")
        seen_url: set[str] = set()
        seen_name: set[str] = set()
        for b in self.backends:
            if b.url in seen_url:
                raise ValueError(f"backend {b.url} is listed twice")
            if b.name in seen_name:
                raise ValueError(f"backend name {b.name!r} is used twice")
            seen_url.add(b.url)
            seen_name.add(b.name)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        for name in (
            "request_timeout",
            "idle_timeout",
            "header_timeout",
            "body_timeout",
            "connect_timeout",
            "health_interval",
            "scrape_interval",
            "scrape_timeout",
            "default_slo_ttft",
            "default_slo_tpot",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number, got {v!r}")
        for name in ("max_body_bytes", "default_max_tokens", "scrape_failures"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if not (isinstance(self.drain_timeout, int | float) and 0 <= self.drain_timeout < math.inf):
            raise ValueError(f"drain-timeout must be >= 0 seconds, got {self.drain_timeout!r}")
        if self.retries < 0 or self.max_connections < 0:
            raise ValueError("retries and max-connections must be >= 0")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.breaker_failures < 0:
            raise ValueError("breaker-failures must be >= 0 (0 turns the breaker off)")
        for name in ("retry_backoff", "retry_backoff_max", "breaker_cooldown"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name.replace('_', '-')} must be a number >= 0, got {v!r}")
        if not (self.backends_file_poll > 0 and math.isfinite(self.backends_file_poll)):
            raise ValueError("backends-file-poll must be a positive number")
        return self


def parse_kv(items: list[str] | None, what: str) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (values parsed as JSON when they parse)."""
    out: dict = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise ValueError(f"bad {what} {it!r}: expected KEY=VALUE")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
