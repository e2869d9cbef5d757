"""A stock DNS-SD browser for lab hosts: python-zeroconf's own ServiceBrowser (its threaded API,
nothing of ollana), printing one JSON line per event until killed or ``--timeout`` passes.

    python -m tests.lab.mdnsbrowse _ollana._tcp.local.
    {"event": "added", "name": "...", "port": 11435, "addresses": [...], "txt": {...}, "at": ...}
    {"event": "removed", "name": "...", "at": ...}
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("type", help="e.g. _ollana._tcp.local.")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    zc = Zeroconf(ip_version=IPVersion.V4Only)
    lock = threading.Lock()

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        out: dict[str, Any] = {"event": state_change.name.lower(), "name": name, "at": time.time()}
        if state_change is not ServiceStateChange.Removed:
            info = zeroconf.get_service_info(service_type, name, 3000)
            if info is not None:
                out.update(port=info.port, server=info.server, addresses=info.parsed_addresses(),
                           txt={k.decode(errors="replace"): _text(v) for k, v in info.properties.items()})
        with lock:
            print(json.dumps(out), flush=True)

    browser = ServiceBrowser(zc, a.type, handlers=[changed])
    print("READY", flush=True)
    done = threading.Event()
    try:
        done.wait(a.timeout)  # lives until the test kills it
    finally:
        browser.cancel()
        zc.close()


if __name__ == "__main__":
    main()
