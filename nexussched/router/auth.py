"""Who may call what: with an API key set, every endpoint but a bare liveness `/health` needs it.

- `Authorization: Bearer <key>`; the scheme is case-insensitive (RFC 7235), the key is compared in
  constant time;
- `/metrics` takes its own key when `--metrics-api-key` is set (a Prometheus scraper then holds
  only that one), else the API key;
- `/backends` and `/scheduler` show internal URLs and plane state: admin views, behind the key;
- `/health` answers without a key, but then only whether the router is up, not its backends.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from .errors import APIError

OPEN_PATHS = frozenset({"/health"})


def bearer_token(header: str) -> bytes | None:
    """The credentials of an `Authorization: Bearer <token>` header (any case of the scheme)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def _matches(got: bytes | None, key: bytes) -> bool:
    return got is not None and hmac.compare_digest(got, key)


@dataclass(frozen=True)
class AccessPolicy:
    api_key: str | None = None
    metrics_api_key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.api_key or self.metrics_api_key)

    def key_for(self, path: str) -> str | None:
        """The key a path needs (None: open)."""
        if path in OPEN_PATHS:
            return None
        if path == "/metrics" and self.metrics_api_key:
            return self.metrics_api_key
        return self.api_key or None

    def authorized(self, request: web.BaseRequest, key: str | None = None) -> bool:
        key = key if key is not None else self.api_key
        if not key:
            return True
        return _matches(bearer_token(request.headers.get("authorization", "")), key.encode())

    def check(self, request: web.BaseRequest) -> None:
        """Raise a 401 unless the request may call its path."""
        key = self.key_for(request.path)
        if key and not self.authorized(request, key):
            what = "metrics API key" if key == self.metrics_api_key else "API key"
            raise APIError(
                401,
                f"invalid or missing {what} (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
