"""Go-flavoured JSON and time values, so the fake's bytes look like Ollama's.

Pure helpers: no sockets, no asyncio. Ollama encodes with Go's encoding/json (compact, HTML
characters escaped) and decodes request bodies with gin's ShouldBindJSON, whose error texts
clients and proxies get to see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

# encoding/json escapes these even in compact mode (HTMLEscape is on by default).
_GO_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE_RE: Final = re.compile("[<>&\u2028\u2029]")

_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
DEFAULT_KEEP_ALIVE: Final = 300.0


def dumps(value: Any) -> bytes:
    """Encode like Go's json.Marshal: compact, UTF-8, with <, >, & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text).encode()


def go_time(ns: int) -> str:
    """RFC 3339 with nanoseconds and trailing zeros trimmed, as Go's time.Time marshals."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def go_quote(text: str) -> str:
    """Go's %q for plain strings (close enough: JSON string quoting)."""
    return json.dumps(text, ensure_ascii=False)


class BindError(Exception):
    """A request body gin would refuse; str() is the text Ollama puts in {"error": ...}."""


class MissingBody(BindError):
    def __init__(self) -> None:
        super().__init__("missing request body")


@dataclass(frozen=True, slots=True)
class Field:
    """One field of the Go request struct: JSON kind accepted and Go type for error texts."""

    kind: str  # "string", "bool", "number", "array", "object", "any", "duration"
    go_type: str


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _syntax_error(text: str, exc: json.JSONDecodeError) -> BindError:
    if exc.pos >= len(text.rstrip()):
        return BindError("unexpected EOF")
    char = text[exc.pos]
    shown = "'\\''" if char == "'" else f"'{char}'"
    if exc.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif exc.msg.startswith("Expecting ':'"):
        where = "after object key"
    elif exc.msg.startswith("Expecting ','"):
        where = "after object key:value pair"
    else:
        where = "looking for beginning of value"
    return BindError(f"invalid character {shown} {where}")


def parse_duration(value: Any) -> float:
    """api.Duration: numbers are seconds, strings use time.ParseDuration; negative = forever."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BindError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, (int, float)):
        return float("inf") if value < 0 else float(value)
    text, sign = value, 1.0
    if text[:1] in "+-":
        sign, text = (-1.0 if text[0] == "-" else 1.0), text[1:]
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise BindError(f"time: invalid duration {go_quote(value)}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise BindError(f"time: invalid duration {go_quote(value)}")
    return float("inf") if sign < 0 else total


def decode_request(body: bytes, go_struct: str, fields: dict[str, Field]) -> dict[str, Any]:
    """Decode a request body the way gin's ShouldBindJSON would, or raise BindError.

    Like json.Decoder.Decode it reads only the first JSON value (trailing bytes are ignored),
    null means "all zero values", and keys match struct fields case-insensitively.
    """
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise MissingBody()
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(text, exc) from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BindError(
            f"json: cannot unmarshal {_kind_of(value)} into Go value of type api.{go_struct}"
        )
    by_fold = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    key: str
    for key, item in value.items():
        name = key if key in fields else by_fold.get(key.lower(), key)
        out[name] = item
        spec = fields.get(name)
        if spec is None or item is None or spec.kind == "any":
            continue
        if spec.kind == "duration":
            out[name] = parse_duration(item)
            continue
        if _kind_of(item) != spec.kind:
            raise BindError(
                f"json: cannot unmarshal {_kind_of(item)} into Go struct field "
                f"{go_struct}.{name} of type {spec.go_type}"
            )
    return out


def keep_alive_of(req: dict[str, Any]) -> float:
    """Seconds a model stays loaded after this request (Ollama's default is 5 minutes)."""
    value = req.get("keep_alive")
    return DEFAULT_KEEP_ALIVE if value is None else float(value)
