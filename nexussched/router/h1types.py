"""What a call through the router's data-plane client (h1client.py) is aimed at, how long it may
take, and how it fails: OSError / TimeoutError subclasses the relay (upstream.py) tells apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


class UpstreamBroken(ConnectionError):
    """The connection ended early, or the engine sent something that is not HTTP/1.1."""


class ConnectFailed(OSError):
    """No connection could be made (refused, unreachable): the engine did no work."""


class ConnectTimeout(TimeoutError):
    pass


class IdleTimeout(TimeoutError):
    """No byte for `idle` seconds (a stalled engine)."""


class TotalTimeout(TimeoutError):
    """The request's own time limit."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    total: float  # whole request, from the call
    connect: float
    idle: float | None = None  # between bytes; None: no limit (a non-streaming answer waits)
    # how often time limits are checked: a twentieth of the shortest, 10 ms to 1 s (a field,
    # not a property: read on every request)
    tick: float = field(init=False)

    def __post_init__(self) -> None:
        shortest = min(self.total, self.idle) if self.idle is not None else self.total
        object.__setattr__(self, "tick", max(0.01, min(1.0, shortest / 20)))


@dataclass(frozen=True, slots=True)
class Target:
    """Where a backend listens, and the header lines every request to it carries."""

    host: str
    port: int
    tls: bool
    host_line: bytes  # b"Host: h:p\r\n"

    @classmethod
    def of(cls, base_url: str) -> Target:
        u = urlsplit(base_url)
        tls = u.scheme == "https"
        host = u.hostname or "127.0.0.1"
        port = u.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        return cls(host, port, tls, f"Host: {shown}:{port}\r\n".encode("idna"))
