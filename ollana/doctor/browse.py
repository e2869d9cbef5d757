"""Listen for DNS-SD answers (``_ollana._tcp``) for a few seconds, next to the heartbeats.

python-zeroconf's own browser: it asks once (a standard mDNS query, as any browser on the LAN
does) and collects the answers; each found service is resolved and read with the node's own
parser (``discovery/mdns.py``), so the doctor reports what a client would believe.
"""

from __future__ import annotations

import threading
from typing import Any

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

from ollana.discovery.mdns import SERVICE_TYPE, Resolved, parse
from ollana.doctor.facts import MdnsFact

MAX_SERVICES = 256
RESOLVE_MS = 1000


def browse(seconds: float) -> list[MdnsFact]:
    """The ``_ollana._tcp`` services that answered within ``seconds``. Raises OSError when
    mDNS cannot be used here (no socket on 5353)."""
    names: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            with lock:
                if len(names) < MAX_SERVICES:
                    names.add(name)

    try:
        zc = Zeroconf()
    except Exception as exc:
        raise OSError(f"mDNS unavailable: {exc}") from exc
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[changed])
        done.wait(seconds)
        browser.cancel()
        with lock:
            found = sorted(names)
        return [_fact(zc, name) for name in found]
    finally:
        zc.close()


def _fact(zc: Zeroconf, name: str) -> MdnsFact:
    info: Any = zc.get_service_info(SERVICE_TYPE, name, RESOLVE_MS)
    if info is None:
        return MdnsFact(name, error="did not resolve (no SRV/TXT/address answer)")
    resolved = Resolved(name, info.port, tuple(info.parsed_scoped_addresses()), info.properties)
    try:
        sighting = parse(resolved)
    except ValueError as exc:
        return MdnsFact(name, error=f"not a valid ollana record: {exc}")
    hb = sighting.heartbeat
    return MdnsFact(name, address=sighting.address, port=hb.proxy_port, node_id=hb.node_id.hex(),
                    hostname=hb.hostname, trust=hb.trust)
