"""gin-contrib/cors v1.7.2 as configured by Ollama (routes.go GenerateRoutes), as pure decisions.

It runs before the allowed-hosts check. A request without Origin, or whose Origin is
"http(s)://" + Host, is not treated as CORS. A disallowed Origin gets 403 with an empty body
on any method; an allowed OPTIONS gets 204 with the preflight headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

_ALLOW_METHODS: Final = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
_ALLOW_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
_MAX_AGE: Final = str(12 * 3600)
_APP_SCHEMES: Final = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


def default_origins(extra: Iterable[str] = ()) -> list[str]:
    """envconfig.AllowedOrigins(): OLLAMA_ORIGINS entries first, then the built-in list."""
    origins = [o.strip() for o in extra if o.strip()]
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return origins + list(_APP_SCHEMES)


def _canonical_header(name: str) -> str:
    # http.CanonicalHeaderKey: first letter and letters after '-' upper-case, rest lower-case.
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.lower().split("-"))


@dataclass(frozen=True, slots=True)
class CorsDecision:
    status: int | None  # None: go on to the next middleware; else answer now with this status
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]
    allow_all: bool

    @classmethod
    def from_origins(cls, origins: Sequence[str]) -> CorsPolicy:
        lowered = [o.lower() for o in origins]
        rules = []
        for origin in lowered:
            if "*" not in origin:
                continue
            i = origin.index("*")
            if i == 0:
                rules.append(("*", origin[1:]))
            elif i == len(origin) - 1:
                rules.append((origin[:i], "*"))
            else:
                rules.append((origin[:i], origin[i + 1 :]))
        return cls(frozenset(lowered), tuple(rules), "*" in lowered)

    def origin_allowed(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if prefix == "*" and origin.endswith(suffix):
                return True
            if suffix == "*" and origin.startswith(prefix):
                return True
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
        return False

    def decide(self, origin: str | None, host: str, method: str) -> CorsDecision:
        if not origin or origin in (f"http://{host}", f"https://{host}"):
            return CorsDecision(None)
        if not self.origin_allowed(origin):
            return CorsDecision(403)
        headers: list[tuple[str, str]] = []
        if method == "OPTIONS":
            allow_headers = ",".join(_canonical_header(h) for h in _ALLOW_HEADERS)
            headers += [
                ("Access-Control-Allow-Methods", _ALLOW_METHODS),
                ("Access-Control-Allow-Headers", allow_headers),
                ("Access-Control-Max-Age", _MAX_AGE),
            ]
            if self.allow_all:
                headers.append(("Access-Control-Allow-Origin", "*"))
            else:
                headers += [
                    ("Vary", "Origin"),
                    ("Vary", "Access-Control-Request-Method"),
                    ("Vary", "Access-Control-Request-Headers"),
                ]
        elif self.allow_all:
            headers.append(("Access-Control-Allow-Origin", "*"))
        else:
            headers.append(("Vary", "Origin"))
        if not self.allow_all:
            headers.append(("Access-Control-Allow-Origin", origin))
        return CorsDecision(204 if method == "OPTIONS" else None, tuple(headers))
