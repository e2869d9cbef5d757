"""The status page's document: the servers, the recent requests, the devices waiting to be
paired. Pure: built from the role's status document and values handed in.

Everything a remote server chose (its host name, its model names) is data to the page, which
writes it as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ollana.trust.document import PendingDevice
from ollana.trust.identity import grouped, short

DASHBOARD_PATH: Final = "/ollana/v1/dashboard"
# A page lists at most this many servers and pending devices (the rest are counted).
MAX_ROWS: Final = 200


def trust_state(peer: dict[str, Any]) -> str:
    """How the client may use a server: "open" (no pairing), "paired", or "not paired"."""
    if peer.get("source") == "local":
        return "this machine"
    if peer.get("trust") != "devices":
        return "open"
    return "paired" if peer.get("paired") else "not paired"


def client_servers(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The servers a client knows, from its status document."""
    return [
        server_entry(
            name=str(p.get("hostname") or p.get("endpoint") or p.get("id")),
            address=str(p.get("endpoint", "")), trust=trust_state(p), healthy=bool(p.get("healthy")),
            rtt_ms=p.get("rtt_ms"), inflight=p.get("inflight"), slots=p.get("slots"),
            models=p.get("models"), loaded=p.get("loaded"), source=str(p.get("source", "")),
            current=p.get("id") == status.get("current_peer"), device_id=p.get("device_id"),
        )
        for p in status.get("peers", [])[:MAX_ROWS]
    ]


def server_entry(
    *, name: str, address: str, trust: str, healthy: bool, rtt_ms: float | None, inflight: Any,
    slots: Any, models: Any, loaded: Any, source: str, current: bool = False, device_id: str | None = None,
) -> dict[str, Any]:
    """One server row: its models (None: catalogue not fetched yet) and which are loaded."""
    return {
        "name": name, "address": address, "trust": trust, "healthy": healthy, "rtt_ms": rtt_ms,
        "inflight": inflight if isinstance(inflight, int) else None,
        "slots": slots if isinstance(slots, int) else None,
        "models": [str(m) for m in models] if isinstance(models, list) else None,
        "loaded": [str(m) for m in loaded] if isinstance(loaded, list) else [],
        "source": source, "current": current, "device_id": grouped(device_id) if device_id else None,
    }


def pending_entries(pending: Iterable[PendingDevice]) -> list[dict[str, Any]]:
    """Devices waiting to be paired, each with the exact command that allows it here."""
    return [
        {
            "device_id": grouped(d.device_id), "hostname": d.hostname, "address": d.address,
            "kind": d.kind.value, "last_seen": d.last_seen,
            "command": f"ollana device allow {short(d.device_id)}",
        }
        for d in sorted(pending, key=lambda d: -d.last_seen)[:MAX_ROWS]
    ]


def document(
    status: dict[str, Any], servers: list[dict[str, Any]], recent: list[dict[str, Any]],
    pending: list[dict[str, Any]], now: float,
) -> dict[str, Any]:
    node = {k: status.get(k) for k in ("hostname", "role", "listen", "ollana", "uptime_s", "trust", "device_id")}
    if status.get("device_id"):
        node["device_id"] = grouped(str(status["device_id"]))
    return {"time": now, "node": node, "servers": servers, "recent": recent, "pending": pending}
